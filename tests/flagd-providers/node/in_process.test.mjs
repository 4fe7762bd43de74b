// The stock Node flagd provider (@openfeature/flagd-provider), in-process, against a live
// Flagstaff cluster's sync listeners over TLS. It cannot send a credential, so its namespace is
// one the cluster serves key-less.
//
// Environment (set by ../run.sh): ADDRESSES (a gRPC `ipv4:` list of the three nodes' sync
// addresses, the provider's node first), CA, NS (a key-less namespace), SDK_KEY (a key of NS, for
// OFREP), OFREP_URL (a node's client URL), ADMIN_URL (a node other than the provider's), TOKEN,
// KILL_PID (the pid of the provider's node, killed halfway), URLS (every node's client URL, for
// /metrics), ASSIGNED (a JSON file of what
// flagstaff-client assigns user-0… in the `split` flag); NODE_EXTRA_CA_CERTS=CA for fetch.
import { OpenFeature } from '@openfeature/server-sdk';
import { readFileSync } from 'node:fs';
import { admin, env, inProcessProvider, request, sleep } from './common.mjs';

const ns = env('NS');
const failures = [];
const check = (what, ok, detail = '') => {
  console.log((ok ? 'ok   ' : 'FAIL ') + what + (detail && !ok ? `: ${detail}` : ''));
  if (!ok) failures.push(what);
};
// Waits (bounded) until `probe` returns true; the seconds it took, or null.
const until = async (probe, seconds) => {
  const t0 = Date.now();
  while (Date.now() < t0 + seconds * 1000) {
    if (await probe()) return (Date.now() - t0) / 1000;
    await sleep(5);
  }
  return null;
};

const provider = inProcessProvider(ns, { retryBackoffMaxMs: 2000 });
await OpenFeature.setProviderAndWait(provider);
const client = OpenFeature.getClient();

const d = await client.getBooleanDetails('bool-flag', false);
check('boolean', d.value === true && d.variant === 'on', JSON.stringify(d));
check('string', (await client.getStringValue('string-flag', 'x')) === 'blue');
check('integer', (await client.getNumberValue('int-flag', 0)) === 42);
check('float', (await client.getNumberValue('float-flag', 0)) === 2.0);
const obj = await client.getObjectValue('object-flag', {});
check('object', obj?.theme === 'dark' && obj?.retries === 3 && Object.keys(obj).length === 2, JSON.stringify(obj));
const internal = { targetingKey: 'u1', email: 'a@example.com' };
check('targeting', (await client.getStringValue('targeted-flag', 'x', internal)) === 'internal');
check('targeting, no match', (await client.getStringValue('targeted-flag', 'x')) === 'external');
check('$ref segment', (await client.getStringValue('segment-flag', 'x', { targetingKey: 'u2', plan: 'beta' })) === 'beta-ui');
check('$ref segment, outside', (await client.getStringValue('segment-flag', 'x')) === 'classic-ui');
const dis = await client.getBooleanDetails('disabled-flag', false);
// Disabled: the default variant's value, as OFREP and flagstaff-client answer (sent to the
// provider as that variant, so it says STATIC).
check('disabled flag: the default variant, as the service answers', dis.value === true && dis.variant === 'on', JSON.stringify(dis));
const meta = d.flagMetadata ?? {};
check('revision in flag metadata', typeof meta.flagstaffRevision === 'number', JSON.stringify(meta));

// `fractional` (v2 in this namespace, as this provider hashes): every user gets the variant
// that flagstaff-client and OFREP give.
const assigned = JSON.parse(readFileSync(env('ASSIGNED'), 'utf8'));
const users = Object.keys(assigned);
const ofrep = `${env('OFREP_URL')}/ofrep/v1/evaluate/flags/split`;
const ofrepSplit = async (targetingKey) =>
  (await request(ofrep, 'POST', env('SDK_KEY'), { context: { targetingKey } })).value;
let differ = 0;
let firstDiff = '';
for (const targetingKey of users) {
  const here = await client.getStringValue('split', 'x', { targetingKey });
  const there = await ofrepSplit(targetingKey);
  if (here !== there || there !== assigned[targetingKey]) {
    differ += 1;
    firstDiff ||= `${targetingKey}: provider ${here}, OFREP ${there}, flagstaff-client ${assigned[targetingKey]}`;
  }
}
check(
  `fractional v2: provider, OFREP and flagstaff-client agree for ${users.length} users`,
  differ === 0 && users.length >= 10000,
  `${differ} differ (${firstDiff})`,
);

// A write through another node reaches the in-process evaluator: time it.
await admin('PATCH', `/v1/namespaces/${ns}/flags/flip`, { defaultVariant: 'new' });
const latency = await until(async () => (await client.getStringValue('flip', 'x')) === 'after', 10);
check('a write through another node arrives within 1 s', latency !== null && latency < 1.0, `${latency} s`);
console.log(`write -> in-process node provider: ${latency === null ? 'never' : Math.round(latency * 1000)} ms`);

// The provider's node is killed: the provider keeps its values, moves to the next address and
// gets the changes written after.
process.kill(Number(env('KILL_PID')), 'SIGKILL');
const killed = Date.now();
let kept = true;
while (Date.now() < killed + 1000) {
  kept &&= (await client.getStringValue('flip', 'x')) === 'after' && (await client.getNumberValue('int-flag', 0)) === 42;
  await sleep(10);
}
check('the last values are kept while the node is gone', kept);
await admin('PATCH', `/v1/namespaces/${ns}/flags/later`, { defaultVariant: 'new' });
const moved = await until(async () => (await client.getStringValue('later', 'x')) === 'after', 30);
check('a write after the kill arrives through another node', moved !== null, 'not within 30 s');
console.log(`kill -> node provider following another node: ${((Date.now() - killed) / 1000).toFixed(1)} s`);

// The split is switched to v3, which this provider does not run: its stream is ended and each
// reconnect refused (FAILED_PRECONDITION, counted in every node's flagstaff_sync_refusals), so
// it keeps the last assignments it was served and takes no later change, rather than assigning
// users otherwise than the service.
const refusals = async () => {
  let n = 0;
  // The node killed above is still down: it counts nothing, before or after.
  for (const url of env('URLS').split(',')) {
    const text = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) }).then((r) => r.text(), () => '');
    const m = text.match(/^flagstaff_sync_refusals_total\{grpc_code="FailedPrecondition"\} (\d+)/m);
    n += m ? Number(m[1]) : 0;
  }
  return n;
};
const before = await refusals();
await admin('PATCH', `/v1/namespaces/${ns}/flags/split`, { fractionalAlgorithm: 'v3' });
const switched = await until(async () => (await ofrepSplit('user-1')) !== assigned['user-1'] || (await ofrepSplit('user-2')) !== assigned['user-2'], 10);
check('OFREP splits with v3 once the flag says so', switched !== null);
// The stream's end, then a refused reconnect.
check('the v2 provider is refused the namespace once it splits with v3', (await until(async () => (await refusals()) >= before + 2, 30)) !== null);
await admin('PATCH', `/v1/namespaces/${ns}/flags/flip`, { defaultVariant: 'old' });
const afterFlip = await refusals();
check('and still refused after a later change', (await until(async () => (await refusals()) > afterFlip, 30)) !== null);
check(
  'meanwhile it keeps the last values it was served',
  (await client.getStringValue('flip', 'x')) === 'after' && (await client.getStringValue('split', 'x', { targetingKey: 'user-1' })) === assigned['user-1'],
);

await OpenFeature.close();
if (failures.length) {
  console.error(`${failures.length} failed: ${failures.join(', ')}`);
  process.exit(1);
}
console.log('all passed');
// The provider, refused above, keeps a reconnect timer that close() does not always clear.
process.exit(0);
