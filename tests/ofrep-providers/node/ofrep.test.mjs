// The stock OpenFeature OFREP provider for Node (@openfeature/ofrep-provider with
// @openfeature/server-sdk) against a running Flagstaff cluster. run.sh creates the namespace,
// flags and SDK key and passes them in the environment; this script only talks OpenFeature,
// except for the one admin write it makes to flip a flag. Exits non-zero if any check fails.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { OpenFeature, ErrorCode, StandardResolutionReasons } from '@openfeature/server-sdk';
import { OFREPProvider } from '@openfeature/ofrep-provider';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};
const OFREP_URL = env('FLAGSTAFF_OFREP_URL');
const SDK_KEY = env('FLAGSTAFF_SDK_KEY');
const ADMIN_URL = env('FLAGSTAFF_ADMIN_URL');
const ADMIN_TOKEN = env('FLAGSTAFF_ADMIN_TOKEN');
const NAMESPACE = env('FLAGSTAFF_NAMESPACE');
const FLIP_FLAG = env('FLAGSTAFF_FLIP_FLAG', 'flip-node');
const OUT_DIR = process.env.FLAGSTAFF_OUT_DIR;

const failures = [];
function check(name, ok, detail = '') {
  console.log(`${ok ? 'ok  ' : 'FAIL'} node: ${name}${ok ? '' : ` -- ${JSON.stringify(detail)}`}`);
  if (!ok) failures.push(name);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const same = (a, b) => isDeepStrictEqual(a, b);

async function adminPatch(flag, patch) {
  const resp = await fetch(`${ADMIN_URL}/v1/namespaces/${NAMESPACE}/flags/${flag}`, {
    method: 'PATCH',
    headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, 'Content-Type': 'application/merge-patch+json' },
    body: JSON.stringify(patch),
    signal: AbortSignal.timeout(10_000),
  });
  if (!resp.ok) throw new Error(`PATCH ${flag}: ${resp.status} ${await resp.text()}`);
  return resp.json();
}

async function main() {
  await OpenFeature.setProviderAndWait(
    new OFREPProvider({ baseUrl: OFREP_URL, headers: [['Authorization', `Bearer ${SDK_KEY}`]] }),
  );
  const client = OpenFeature.getClient('flagstaff-ofrep-test');
  const R = StandardResolutionReasons;

  // Every type. Defaults differ from the served values, so a fallback cannot pass.
  let d = await client.getBooleanDetails('bool-flag', false);
  check('boolean', d.value === true && d.variant === 'on' && d.reason === R.STATIC && !d.errorCode, d);

  d = await client.getStringDetails('string-flag', 'none');
  check('string', d.value === 'blue' && d.variant === 'blue' && d.reason === R.STATIC, d);

  d = await client.getNumberDetails('int-flag', 0);
  check('number (integer)', d.value === 42 && Number.isInteger(d.value) && d.variant === 'large' && !d.errorCode, d);

  d = await client.getNumberDetails('float-flag', 0.5);
  check('number (2.0)', d.value === 2 && d.variant === 'high' && !d.errorCode, d);

  d = await client.getNumberDetails('float-frac-flag', 0);
  check('number (0.25)', d.value === 0.25 && !d.errorCode, d);

  d = await client.getObjectDetails('object-flag', {});
  check(
    'object',
    same(d.value, { limits: { rps: 2.5 }, retries: 3, tags: ['a', 'b'], theme: 'dark' }) && d.variant === 'cfg' && !d.errorCode,
    d,
  );

  d = await client.getBooleanDetails('bool-flag', false);
  check('flag metadata reaches the client', d.flagMetadata?.owner === 'checkout-team', d.flagMetadata);

  // Targeting, with and without a targeting key (the email rule needs none).
  d = await client.getStringDetails('targeted-flag', 'none', { email: 'ana@example.com' });
  check('targeting match', d.value === 'internal' && d.reason === R.TARGETING_MATCH, d);
  d = await client.getStringDetails('targeted-flag', 'none', { targetingKey: 'user-7', email: 'bo@elsewhere.org' });
  check('targeting miss', d.value === 'external' && !d.errorCode, d);
  d = await client.getStringDetails('targeted-flag', 'none');
  check('targeting without context', d.value === 'external' && !d.errorCode, d);

  // A 50/50 fractional split over the targeting key: stable per key, both halves used.
  const assignments = {};
  let reasonsOk = true;
  for (let i = 0; i < 200; i++) {
    const key = `user-${i}`;
    d = await client.getStringDetails('split-flag', 'none', { targetingKey: key });
    reasonsOk &&= d.reason === R.SPLIT && !d.errorCode;
    assignments[key] = d.value;
  }
  const counts = {};
  for (const v of Object.values(assignments)) counts[v] = (counts[v] ?? 0) + 1;
  check('split reason SPLIT', reasonsOk);
  check(
    'split uses both variants, roughly evenly',
    same(Object.keys(counts).sort(), ['control', 'treatment']) && Object.values(counts).every((c) => c >= 60 && c <= 140),
    counts,
  );
  const again = [];
  for (let i = 0; i < 20; i++) again.push(await client.getStringValue('split-flag', 'none', { targetingKey: `user-${i}` }));
  check('split is sticky per key', same(again, Array.from({ length: 20 }, (_, i) => assignments[`user-${i}`])));
  if (OUT_DIR) {
    const sorted = Object.fromEntries(Object.entries(assignments).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    writeFileSync(join(OUT_DIR, 'split-node.json'), JSON.stringify(sorted));
  }

  // DISABLED: the default variant's value, not the caller's default.
  d = await client.getBooleanDetails('disabled-flag', false);
  check('disabled', d.value === true && d.reason === R.DISABLED && d.variant === 'on' && !d.errorCode, d);

  // No default variant and no targeting: the server leaves value and variant out (OFREP's
  // "use the code default"); this provider reports an error, but the value is the caller's
  // default either way.
  d = await client.getStringDetails('no-default-flag', 'fallback');
  check("no default variant -> caller's default", d.value === 'fallback', d);

  // Unknown flag: FLAG_NOT_FOUND and the caller's default.
  d = await client.getStringDetails('no-such-flag', 'fallback');
  check('unknown flag', d.value === 'fallback' && d.errorCode === ErrorCode.FLAG_NOT_FOUND && d.reason === R.ERROR, d);

  // Asking for the wrong type: TYPE_MISMATCH and the caller's default.
  d = await client.getBooleanDetails('string-flag', false);
  check('type mismatch', d.value === false && d.errorCode === ErrorCode.TYPE_MISMATCH, d);

  // A bad SDK key: an error, never a value.
  await OpenFeature.setProviderAndWait(
    'bad-key',
    new OFREPProvider({ baseUrl: OFREP_URL, headers: [['Authorization', 'Bearer not-a-key']] }),
  );
  d = await OpenFeature.getClient('bad-key').getBooleanDetails('bool-flag', false);
  check('bad SDK key', d.value === false && !!d.errorCode && d.reason === R.ERROR, d);

  // A write is seen: flip the flag through the admin API, then poll the provider.
  d = await client.getStringDetails(FLIP_FLAG, 'none');
  check('flip flag before the write', d.value === 'before', d);
  const written = await adminPatch(FLIP_FLAG, { defaultVariant: 'new' });
  const start = performance.now();
  let seen;
  for (let i = 0; i < 400 && performance.now() - start < 10_000; i++) {
    seen = await client.getStringValue(FLIP_FLAG, 'none');
    if (seen === 'after') break;
    await sleep(25);
  }
  const elapsed = Math.round(performance.now() - start);
  check(`flip seen after the write (revision ${written.revision}, ${elapsed} ms)`, seen === 'after', seen);
  const later = [];
  for (let i = 0; i < 10; i++) later.push(await client.getStringValue(FLIP_FLAG, 'none'));
  check('flip does not go back', later.every((v) => v === 'after'), later);

  await OpenFeature.close();
  console.log(failures.length ? `node: ${failures.length} failed` : 'node: all checks passed');
  return failures.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error('node: test crashed:', err);
    process.exit(1);
  },
);
