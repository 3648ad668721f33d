// Drives the official Azure DPS service client (azure-iot-provisioning-service 1.11.2)
// against the local `dps serve` and asserts every result. Exits non-zero on the first
// failure.
//
// Environment: DPS_CONNECTION_STRING (owner policy), DPS_CA_FILE (the service's ca.pem),
// DPS_X509_LEAF_PEM and DPS_X509_CA_PEM (files: a leaf and a CA certificate),
// DPS_HUB (a hub linked to the service).
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
// `dps serve` listens on 127.0.0.1 and names itself `localhost`. Node 18 (Debian 12) resolves
// localhost to ::1 first and, unlike Node 20, does not fall back to IPv4 on its own.
require('node:dns').setDefaultResultOrder('ipv4first');

const servicePkg = require.resolve('azure-iot-provisioning-service');
// The service package's own copies of its dependencies (see dps-wire.md).
const fromService = (name) => require(require.resolve(name, { paths: [path.dirname(servicePkg)] }));
const { ProvisioningServiceClient } = require('azure-iot-provisioning-service');
const { Http, RestApiClient } = fromService('azure-iot-http-base');
const { ConnectionString, SharedAccessSignature } = fromService('azure-iot-common');

const env = (n) => {
  const v = process.env[n];
  if (!v) throw new Error(`${n} is not set`);
  return v;
};

const { HostPortAgent } = require('./host-port-agent');

function makeClient() {
  const cs = env('DPS_CONNECTION_STRING');
  const cn = ConnectionString.parse(cs);
  const config = {
    host: cn.HostName,
    sharedAccessSignature: SharedAccessSignature.create(cn.HostName, cn.SharedAccessKeyName, cn.SharedAccessKey, Date.now()),
  };
  const httpBase = new Http();
  httpBase.setOptions({ ca: fs.readFileSync(env('DPS_CA_FILE'), 'utf8'), http: { agent: new HostPortAgent({ keepAlive: true }) } });
  const pkg = require('azure-iot-provisioning-service/package.json');
  const rest = new RestApiClient(config, `${pkg.name}/${pkg.version}`, httpBase);
  return new ProvisioningServiceClient(config, rest);
}

const key = (b) => Buffer.alloc(32, b).toString('base64');
let checks = 0;
const ok = (cond, msg) => { assert.ok(cond, msg); checks++; };
const eq = (a, b, msg) => { assert.deepEqual(a, b, msg); checks++; };

async function expectStatus(promise, status, what) {
  try {
    await promise;
  } catch (err) {
    const got = err.response && err.response.statusCode;
    eq(got, status, `${what}: expected HTTP ${status}, got ${got} (${err.message})`);
    return err;
  }
  assert.fail(`${what}: expected HTTP ${status}, but it succeeded`);
}

function bulk(client, op) {
  // The promise form never settles (dps-wire.md section 8): use the callback.
  return new Promise((resolve, reject) => {
    client.runBulkEnrollmentOperation(op, (err, result) => (err ? reject(err) : resolve(result)));
  });
}

async function main() {
  const client = makeClient();
  const hub = env('DPS_HUB');
  const leafPem = fs.readFileSync(env('DPS_X509_LEAF_PEM'), 'utf8');
  const caPem = fs.readFileSync(env('DPS_X509_CA_PEM'), 'utf8');

  // Create: symmetric key, x509 and tpm individual enrollments.
  const sym = {
    registrationId: 'interop-sym-1',
    deviceId: 'interop-sym-1',
    attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: key(1), secondaryKey: key(2) } },
    provisioningStatus: 'enabled',
    allocationPolicy: 'static',
    iotHubs: [hub],
    initialTwin: { tags: { site: 'factory-7' }, properties: { desired: { fw: '1.2.3' } } },
    capabilities: { iotEdge: false },
    reprovisionPolicy: { updateHubAssignment: true, migrateDeviceData: true },
  };
  const created = (await client.createOrUpdateIndividualEnrollment(sym)).responseBody;
  eq(created.registrationId, 'interop-sym-1', 'create sym: id');
  ok(typeof created.etag === 'string' && created.etag.length > 0, 'create sym: etag');
  ok(created.createdDateTimeUtc, 'create sym: createdDateTimeUtc');
  eq(created.initialTwin.tags.site, 'factory-7', 'create sym: twin');

  const x509 = (await client.createOrUpdateIndividualEnrollment({
    registrationId: 'interop-x509-1',
    attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: leafPem } } } },
  })).responseBody;
  eq(x509.attestation.x509.clientCertificates.primary.info.subjectName, 'CN=interop-x509-1', 'create x509: info filled');

  const tpm = (await client.createOrUpdateIndividualEnrollment({
    registrationId: 'interop-tpm-1',
    attestation: { type: 'tpm', tpm: { endorsementKey: Buffer.alloc(64, 7).toString('base64') } },
  })).responseBody;
  eq(tpm.attestation.type, 'tpm', 'create tpm');

  // Groups: symmetric and x509.
  const gsym = (await client.createOrUpdateEnrollmentGroup({
    enrollmentGroupId: 'interop-grp-sym',
    attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: '', secondaryKey: '' } },
    provisioningStatus: 'enabled',
    allocationPolicy: 'hashed',
    iotHubs: [hub],
  })).responseBody;
  ok(gsym.etag, 'create group sym: etag');
  const gx = (await client.createOrUpdateEnrollmentGroup({
    enrollmentGroupId: 'interop-grp-x509',
    attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: caPem } } } },
  })).responseBody;
  eq(gx.attestation.x509.signingCertificates.primary.info.subjectName, 'CN=Interop CA', 'create group x509: info');
  // The group attestation call (lower-case `enrollmentgroups` path) returns generated keys.
  const gatt = (await client.getEnrollmentGroupAttestationMechanism('interop-grp-sym')).responseBody;
  eq(Buffer.from(gatt.symmetricKey.primaryKey, 'base64').length, 32, 'group keys generated');
  eq((await client.getEnrollmentGroup('interop-grp-sym')).responseBody.enrollmentGroupId, 'interop-grp-sym', 'get group');

  // Get.
  const got = (await client.getIndividualEnrollment('interop-sym-1')).responseBody;
  eq(got.etag, created.etag, 'get: same etag');
  eq(got.iotHubs, [hub], 'get: hubs');
  const att = (await client.getIndividualEnrollmentAttestationMechanism('interop-sym-1')).responseBody;
  eq(att.symmetricKey.primaryKey, key(1), 'attestation mechanism returns the key');

  // Update with the right etag (the SDK sends If-Match from the object's etag).
  const upd = Object.assign({}, got, { provisioningStatus: 'disabled' });
  const updated = (await client.createOrUpdateIndividualEnrollment(upd)).responseBody;
  eq(updated.provisioningStatus, 'disabled', 'update: applied');
  ok(updated.etag !== created.etag, 'update: etag changed');

  // Update with a stale etag: 412.
  const stale = Object.assign({}, got, { provisioningStatus: 'enabled' });
  const e412 = await expectStatus(client.createOrUpdateIndividualEnrollment(stale), 412, 'stale etag');
  eq(e412.name, 'InvalidEtagError', 'stale etag: error class');
  eq((await client.getIndividualEnrollment('interop-sym-1')).responseBody.provisioningStatus, 'disabled', 'stale etag wrote nothing');

  // Delete (with the etag), then 404.
  await client.deleteIndividualEnrollment('interop-sym-1', updated.etag);
  await expectStatus(client.getIndividualEnrollment('interop-sym-1'), 404, 'get after delete');
  await client.deleteEnrollmentGroup('interop-grp-x509');

  // Bulk create of 10.
  const ten = Array.from({ length: 10 }, (_, i) => ({
    registrationId: `interop-bulk-${String(i).padStart(2, '0')}`,
    attestation: { type: 'symmetricKey', symmetricKey: {} },
  }));
  const r = await bulk(client, { mode: 'create', enrollments: ten });
  eq(r.isSuccessful, true, 'bulk of 10: isSuccessful');
  eq(r.errors, [], 'bulk of 10: no errors');
  // Creating the same again reports every item.
  const again = await bulk(client, { mode: 'create', enrollments: ten.slice(0, 2) });
  eq(again.isSuccessful, false, 'bulk conflict: isSuccessful false');
  eq(again.errors.map((e) => e.registrationId).sort(), ['interop-bulk-00', 'interop-bulk-01'], 'bulk conflict: per item');

  // Bring the total to 25 (x509 + tpm + 10 + 13) and query with page size 10.
  const more = Array.from({ length: 13 }, (_, i) => ({
    registrationId: `interop-more-${String(i).padStart(2, '0')}`,
    attestation: { type: 'tpm', tpm: { endorsementKey: Buffer.alloc(64, i).toString('base64') } },
  }));
  eq((await bulk(client, { mode: 'create', enrollments: more.slice(0, 10) })).isSuccessful, true, 'bulk more 1');
  eq((await bulk(client, { mode: 'create', enrollments: more.slice(10) })).isSuccessful, true, 'bulk more 2');
  const q = client.createIndividualEnrollmentQuery({ query: '*' }, 10);
  const pages = [];
  const ids = new Set();
  for (let i = 0; i < 10 && q.hasMoreResults; i++) {
    // Pass the token explicitly (dps-wire.md section 8).
    const page = (await q.next(q.continuationToken)).responseBody;
    pages.push(page.length);
    page.forEach((e) => ids.add(e.registrationId));
  }
  eq(pages, [10, 10, 5], 'query of 25 with page size 10 ends after three pages');
  eq(q.hasMoreResults, false, 'query: no more results');
  eq(ids.size, 25, 'query: 25 distinct enrollments');

  // Registration state of an unknown id: 404.
  await expectStatus(client.getDeviceRegistrationState('interop-unknown'), 404, 'registration state of unknown id');

  console.log(`interop: ok ${checks} checks`);
}

main().catch((err) => {
  console.error(`interop: FAILED: ${err && err.stack ? err.stack : err}`);
  process.exit(1);
});
