"""Drives the official Azure IoT Python device client (azure-iot-device 2.14.0, whose
provisioning client speaks MQTT only, over paho-mqtt 1.6.1 and TLS 1.2) against the local
`dps serve --mqtt-listen`, one registration per unit, and checks each outcome. Exits non-zero
if any unit ends otherwise than expected.

The SDK always dials port 8883 (dps-wire.md section 1): paho's Client.connect is wrapped to
dial the service's port instead; every byte the SDK sends is unchanged.

Environment:
  DPS_MQTT_PORT     the service's MQTT port on localhost
  DPS_ID_SCOPE      its ID scope
  DPS_CA_FILE       its ca.pem
  DPS_DEVICE_UNITS  JSON array of units:
    {registrationId, kind: "symmetric" | "x509", key? (base64), certFile?, keyFile?,
     expect: "assigned" | "refused", expectHub?}

Prints one JSON line per unit, then `python device interop: ok N units`. Keys never appear.
"""

import json
import os
import sys

import paho.mqtt.client as paho
from azure.iot.device import ProvisioningDeviceClient, X509

PORT = int(os.environ["DPS_MQTT_PORT"])
_connect = paho.Client.connect


def _connect_to_the_service(self, host, port=1883, *args, **kwargs):
    if port == 8883:
        port = PORT
    return _connect(self, host, port, *args, **kwargs)


paho.Client.connect = _connect_to_the_service


def register(unit, scope, ca):
    if unit["kind"] == "symmetric":
        client = ProvisioningDeviceClient.create_from_symmetric_key(
            provisioning_host="localhost",
            registration_id=unit["registrationId"],
            id_scope=scope,
            symmetric_key=unit["key"],
            server_verification_cert=ca,
        )
    else:
        client = ProvisioningDeviceClient.create_from_x509_certificate(
            provisioning_host="localhost",
            registration_id=unit["registrationId"],
            id_scope=scope,
            x509=X509(cert_file=unit["certFile"], key_file=unit["keyFile"]),
            server_verification_cert=ca,
        )
    try:
        result = client.register()
    except Exception as e:  # the SDK's refusals are several exception classes
        return {"outcome": "refused", "error": type(e).__name__, "message": str(e)[:300]}
    state = result.registration_state
    if result.status != "assigned":
        return {"outcome": "refused", "status": result.status}
    return {
        "outcome": "assigned",
        "assignedHub": state.assigned_hub,
        "deviceId": state.device_id,
        "substatus": state.sub_status,
    }


def main():
    scope = os.environ["DPS_ID_SCOPE"]
    with open(os.environ["DPS_CA_FILE"], encoding="ascii") as f:
        ca = f.read()
    units = json.loads(os.environ["DPS_DEVICE_UNITS"])
    wrong = 0
    for unit in units:
        got = register(unit, scope, ca)
        got["registrationId"] = unit["registrationId"]
        print(json.dumps(got, sort_keys=True), flush=True)
        ok = got["outcome"] == unit["expect"]
        if ok and unit.get("expectHub"):
            ok = got["assignedHub"] == unit["expectHub"]
        if not ok:
            print("unexpected outcome for %s: wanted %s" % (unit["registrationId"], unit["expect"]),
                  file=sys.stderr)
            wrong += 1
    if wrong:
        sys.exit(1)
    print("python device interop: ok %d units" % len(units))


if __name__ == "__main__":
    main()
