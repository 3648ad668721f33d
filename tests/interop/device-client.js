// Drives the official Azure DPS Node device client (azure-iot-provisioning-device 1.9.1 over
// azure-iot-provisioning-device-http 1.9.1 or azure-iot-provisioning-device-mqtt 1.8.1, with
// azure-iot-security-symmetric-key 1.8.2 and azure-iot-security-x509 1.7.12) against the local
// `dps serve`, one registration per unit, and asserts each outcome. Exits non-zero if any unit
// ends otherwise than expected.
//
// Environment:
//   DPS_TRANSPORT     `http` (default): HTTPS, DPS_HOST is the service's HTTPS port;
//                     `mqtt`: MQTT 3.1.1 over TLS (`dps serve --mqtt-listen`), DPS_HOST is
//                     its MQTT port. The MQTT transport dials `mqtts://` + DPS_HOST as given.
//   DPS_HOST          `localhost:PORT` of the service
//   DPS_ID_SCOPE      its ID scope
//   DPS_CA_FILE       its ca.pem
//   DPS_DEVICE_UNITS  JSON array of units:
//     { registrationId,
//       kind: "symmetric" | "x509",
//       key?: base64 device key (symmetric),
//       certFile?, keyFile?: PEM files (x509; certFile may hold the chain, leaf first),
//       expect: "assigned" | "refused",
//       expectHub?, expectDeviceId?: checked when assigned,
//       keepAlive?: false to open a new TLS connection per request (HTTP only; default true) }
//
// Prints one JSON line per unit, in the order given:
//   {"registrationId","outcome":"assigned","assignedHub","deviceId","substatus","tls":{…}}
//   {"registrationId","outcome":"refused","error","statusCode"|"status"|"connack","message","tls":{…}}
//   {"registrationId","outcome":"error",…}  anything else (a timeout, a TLS failure, …)
// then `device interop: ok N units over TRANSPORT` when every unit ended as expected. Keys never appear in
// the output.
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
// `dps serve` listens on 127.0.0.1 and names itself `localhost`. Node 18 (Debian 12) resolves
// localhost to ::1 first and, unlike Node 20, does not fall back to IPv4 on its own.
require('node:dns').setDefaultResultOrder('ipv4first');

const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { X509Security } = require('azure-iot-security-x509');

const env = (n) => {
  const v = process.env[n];
  if (!v) throw new Error(`${n} is not set`);
  return v;
};

// The last package of `chain` as each resolves the next from where it is installed (so a
// package's own nested copy of a dependency, where it has one).
function requireVia(...chain) {
  let dir = __dirname;
  let file;
  for (const name of chain) {
    file = require.resolve(name, { paths: [dir] });
    dir = path.dirname(file);
  }
  return require(file);
}

const { HostPortAgent } = require('./host-port-agent');

function securityClient(unit) {
  switch (unit.kind) {
    case 'symmetric':
      assert.ok(unit.key, `${unit.registrationId}: a symmetric unit needs a key`);
      return new SymmetricKeySecurityClient(unit.registrationId, unit.key);
    case 'x509':
      assert.ok(unit.certFile && unit.keyFile, `${unit.registrationId}: an x509 unit needs certFile and keyFile`);
      return new X509Security(unit.registrationId, {
        cert: fs.readFileSync(unit.certFile, 'utf8'),
        key: fs.readFileSync(unit.keyFile, 'utf8'),
      });
    default:
      throw new Error(`${unit.registrationId}: unknown kind ${JSON.stringify(unit.kind)}`);
  }
}

// The status of a response that failed: the HTTP status, or over MQTT the one in the response
// topic `$dps/registrations/res/<status>/?…` (dps-wire.md section 6).
function failedStatus(err) {
  if (err && err.response && err.response.statusCode) return err.response.statusCode;
  const topic = err && err.transportObject && err.transportObject.topic;
  const m = typeof topic === 'string' ? /^\$dps\/registrations\/res\/(\d+)\//.exec(topic) : null;
  return m ? Number(m[1]) : undefined;
}

// What a rejected register() means: a refusal the service chose (dps-wire.md section 7), or
// anything else.
function classify(err) {
  const statusCode = failedStatus(err);
  if ([401, 403, 404].includes(statusCode)) {
    return { outcome: 'refused', error: err.name, statusCode, message: err.message };
  }
  // MQTT: a CONNACK other than 0 (mqtt.js: `Connection refused: <reason>`, err.code = the
  // return code). 4 (bad user name or password) and 5 (not authorized) refuse the credential.
  if (err && [4, 5].includes(err.code) && /^Connection refused: /.test(err.message)) {
    return { outcome: 'refused', error: err.name, connack: err.code, message: err.message };
  }
  // status "failed" (DeviceRegistrationFailedError) or another non-"assigned" status
  // (SyntaxError "status is …"): the body is in err.result.
  const status = err && err.result && typeof err.result.status === 'string' ? err.result.status : undefined;
  if (status && status.toLowerCase() !== 'assigned') {
    const st = err.result.registrationState || {};
    return { outcome: 'refused', error: err.name, status, message: st.errorMessage || err.message };
  }
  return {
    outcome: 'error',
    error: err && err.name,
    statusCode,
    code: err && err.code,
    message: String(err && err.message),
  };
}

// Each transport, required only when chosen: (unit, ca) => { transport, tlsStats, close }.
const transports = {
  http() {
    const { Http: DeviceHttp } = require('azure-iot-provisioning-device-http');
    // The transport's own copy of azure-iot-http-base (1.12.1; the service package has 1.12.2).
    const { Http: HttpBase } = requireVia('azure-iot-provisioning-device-http', 'azure-iot-http-base');
    return (unit, ca) => {
      const agent = new HostPortAgent({ keepAlive: unit.keepAlive !== false });
      const httpBase = new HttpBase();
      httpBase.setOptions({ ca, http: { agent } });
      return { transport: new DeviceHttp(httpBase), tlsStats: agent.tlsStats, close: () => agent.destroy() };
    };
  },
  mqtt() {
    const { Mqtt: DeviceMqtt } = require('azure-iot-provisioning-device-mqtt');
    // The transport's azure-iot-mqtt-base (1.13.1) and the mqtt.js (4.3.8) under it.
    const { MqttBase } = requireVia('azure-iot-provisioning-device-mqtt', 'azure-iot-mqtt-base');
    const mqttJs = requireVia('azure-iot-provisioning-device-mqtt', 'azure-iot-mqtt-base', 'mqtt');
    return (unit, ca) => {
      assert.equal(unit.keepAlive, undefined, `${unit.registrationId}: keepAlive is for the HTTP transport`);
      // MqttBase takes the mqtt.js module as its provider; this one is mqtt.js itself, counting
      // the connections (one MQTT session per register()) and noting their TLS.
      const tlsStats = { connections: 0, resumed: 0 };
      const clients = [];
      const provider = {
        connect(uri, options) {
          const c = mqttJs.connect(uri, options);
          clients.push(c);
          tlsStats.connections++;
          // mqtt.js opens its TLS stream in the constructor.
          c.stream.once('secureConnect', () => {
            tlsStats.protocol = c.stream.getProtocol();
            if (c.stream.isSessionReused()) tlsStats.resumed++;
          });
          return c;
        },
      };
      const mqttBase = new MqttBase(provider);
      mqttBase.setOptions({ ca });
      return {
        transport: new DeviceMqtt(mqttBase),
        tlsStats,
        close: () => clients.forEach((c) => c.end(true)),
      };
    };
  },
};

async function registerUnit(unit, makeTransport, host, idScope, ca) {
  const { transport, tlsStats, close } = makeTransport(unit, ca);
  const client = ProvisioningDeviceClient.create(host, idScope, transport, securityClient(unit));
  const started = Date.now();
  let line;
  try {
    const st = await client.register();
    line = {
      outcome: 'assigned',
      assignedHub: st && st.assignedHub,
      deviceId: st && st.deviceId,
      status: st && st.status,
      substatus: st && st.substatus,
      stateRegistrationId: st && st.registrationId,
    };
  } catch (err) {
    line = classify(err);
  } finally {
    close();
  }
  return Object.assign({ registrationId: unit.registrationId }, line, {
    ms: Date.now() - started,
    tls: tlsStats,
  });
}

function check(unit, line, transportName) {
  const id = unit.registrationId;
  assert.equal(line.outcome, unit.expect, `${id}: expected ${unit.expect}, got ${JSON.stringify(line)}`);
  if (line.outcome === 'assigned') {
    assert.equal(typeof line.assignedHub, 'string', `${id}: assignedHub`);
    assert.ok(line.assignedHub.length > 0, `${id}: assignedHub is empty`);
    assert.equal(typeof line.deviceId, 'string', `${id}: deviceId`);
    assert.ok(line.deviceId.length > 0, `${id}: deviceId is empty`);
    assert.equal(line.status, 'assigned', `${id}: registrationState.status`);
    assert.equal(String(line.stateRegistrationId).toLowerCase(), id.toLowerCase(), `${id}: registrationState.registrationId`);
    if (unit.expectHub !== undefined) assert.equal(line.assignedHub, unit.expectHub, `${id}: hub`);
    if (unit.expectDeviceId !== undefined) assert.equal(line.deviceId, unit.expectDeviceId, `${id}: deviceId`);
  }
  if (transportName === 'mqtt' && line.outcome === 'assigned') {
    // Register and poll on one MQTT session.
    assert.equal(line.tls.connections, 1, `${id}: expected one MQTT connection, got ${JSON.stringify(line.tls)}`);
  }
  if (unit.keepAlive === false) {
    // Register and poll each opened a connection of their own.
    assert.ok(line.tls.connections >= 2, `${id}: expected a connection per request, got ${JSON.stringify(line.tls)}`);
  }
}

async function main() {
  // Every request has a 30 s timeout in the transport; a run that still has not finished
  // after this long is stuck, and the caller must not wait on it forever.
  setTimeout(() => {
    console.error('device interop: FAILED: still running after 120 s');
    process.exit(1);
  }, 120000).unref();
  const transportName = process.env.DPS_TRANSPORT || 'http';
  assert.ok(Object.hasOwn(transports, transportName), `DPS_TRANSPORT must be http or mqtt, not ${transportName}`);
  const makeTransport = transports[transportName]();
  const host = env('DPS_HOST');
  const idScope = env('DPS_ID_SCOPE');
  const ca = fs.readFileSync(env('DPS_CA_FILE'), 'utf8');
  const units = JSON.parse(env('DPS_DEVICE_UNITS'));
  assert.ok(Array.isArray(units) && units.length > 0, 'DPS_DEVICE_UNITS is an empty list');
  for (const u of units) {
    assert.ok(['assigned', 'refused'].includes(u.expect), `${u.registrationId}: expect must be assigned or refused`);
  }
  // All units at once, as a production line would; each waits the Retry-After the service
  // sends before its poll.
  const lines = await Promise.all(units.map((u) => registerUnit(u, makeTransport, host, idScope, ca)));
  const failures = [];
  units.forEach((u, i) => {
    console.log(JSON.stringify(lines[i]));
    try {
      check(u, lines[i], transportName);
    } catch (err) {
      failures.push(err.message);
    }
  });
  if (failures.length > 0) {
    throw new Error(`${failures.length} of ${units.length} units ended unexpectedly:\n  ${failures.join('\n  ')}`);
  }
  console.log(`device interop: ok ${units.length} units over ${transportName}`);
}

main().catch((err) => {
  console.error(`device interop: FAILED: ${err && err.stack ? err.stack : err}`);
  process.exit(1);
});
