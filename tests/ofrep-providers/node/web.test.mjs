// The stock OpenFeature OFREP web provider (@openfeature/ofrep-web-provider with
// @openfeature/web-sdk) against a running Flagstaff cluster. Unlike the server provider it uses
// the bulk endpoint: one evaluation per context, cached, refreshed by polling with
// If-None-Match. Run under Node with no browser: no localStorage cache, no visibility refresh.
// Exits non-zero if any check fails.

import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { OpenFeature, ErrorCode, StandardResolutionReasons } from '@openfeature/web-sdk';
import { OFREPWebProvider } from '@openfeature/ofrep-web-provider';

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
const FLIP_FLAG = env('FLAGSTAFF_WEB_FLIP_FLAG', 'flip-web');
const OUT_DIR = process.env.FLAGSTAFF_OUT_DIR;
const POLL_MS = 100;

const failures = [];
function check(name, ok, detail = '') {
  console.log(`${ok ? 'ok  ' : 'FAIL'} node-web: ${name}${ok ? '' : ` -- ${JSON.stringify(detail)}`}`);
  if (!ok) failures.push(name);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Counts the bulk requests and their answers, to show the 304 path is really used.
const statuses = [];
const countingFetch = async (req) => {
  const resp = await fetch(req);
  statuses.push(resp.status);
  return resp;
};

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
  const R = StandardResolutionReasons;
  await OpenFeature.setContext({ targetingKey: 'user-3', email: 'bo@elsewhere.org' });
  await OpenFeature.setProviderAndWait(
    new OFREPWebProvider({
      baseUrl: OFREP_URL,
      headers: [['Authorization', `Bearer ${SDK_KEY}`]],
      fetchImplementation: countingFetch,
      pollInterval: POLL_MS,
      cacheMode: 'disabled',
      disableVisibilityRefresh: true,
    }),
  );
  const client = OpenFeature.getClient();

  let d = client.getBooleanDetails('bool-flag', false);
  check('boolean', d.value === true && d.variant === 'on' && d.reason === R.STATIC && !d.errorCode, d);
  d = client.getStringDetails('string-flag', 'none');
  check('string', d.value === 'blue' && d.reason === R.STATIC, d);
  d = client.getNumberDetails('int-flag', 0);
  check('number (integer)', d.value === 42 && !d.errorCode, d);
  d = client.getNumberDetails('float-flag', 0.5);
  check('number (2.0)', d.value === 2 && !d.errorCode, d);
  d = client.getObjectDetails('object-flag', {});
  check('object', isDeepStrictEqual(d.value, { theme: 'dark', retries: 3, tags: ['a', 'b'], limits: { rps: 2.5 } }), d);
  d = client.getBooleanDetails('disabled-flag', false);
  check('disabled', d.value === true && d.reason === R.DISABLED && !d.errorCode, d);
  d = client.getStringDetails('no-default-flag', 'fallback');
  check("no default variant -> caller's default, reason DEFAULT", d.value === 'fallback' && d.reason === R.DEFAULT && !d.errorCode, d);
  d = client.getStringDetails('no-such-flag', 'fallback');
  check('unknown flag', d.value === 'fallback' && d.errorCode === ErrorCode.FLAG_NOT_FOUND, d);

  // The split for user-3 matches what the per-call providers saw for the same key.
  d = client.getStringDetails('split-flag', 'none');
  check('split reason SPLIT', d.reason === R.SPLIT && (d.value === 'control' || d.value === 'treatment'), d);
  const pyFile = OUT_DIR && join(OUT_DIR, 'split-python.json');
  if (pyFile && existsSync(pyFile)) {
    const expected = JSON.parse(readFileSync(pyFile, 'utf8'))['user-3'];
    check('split agrees with the Python provider for user-3', d.value === expected, { got: d.value, expected });
  }

  // A context change that keeps the targeting key: the provider re-fetches with its old
  // If-None-Match, and must get the new context's answer, not a 304.
  d = client.getStringDetails('targeted-flag', 'none');
  check('targeting miss', d.value === 'external', d);
  await OpenFeature.setContext({ targetingKey: 'user-3', email: 'ana@example.com' });
  d = client.getStringDetails('targeted-flag', 'none');
  check('targeting after a context change with the same targeting key', d.value === 'internal' && d.reason === R.TARGETING_MATCH, d);

  // Polling with If-None-Match: 304s while nothing changes, then the flip after a write.
  await sleep(4 * POLL_MS);
  check('polls answered 304 while nothing changed', statuses.includes(304), statuses);
  d = client.getStringDetails(FLIP_FLAG, 'none');
  check('flip flag before the write', d.value === 'before', d);
  const written = await adminPatch(FLIP_FLAG, { defaultVariant: 'new' });
  const start = performance.now();
  let seen;
  for (let i = 0; i < 200 && performance.now() - start < 10_000; i++) {
    seen = client.getStringValue(FLIP_FLAG, 'none');
    if (seen === 'after') break;
    await sleep(50);
  }
  const elapsed = Math.round(performance.now() - start);
  check(`flip seen after the write by polling (revision ${written.revision}, ${elapsed} ms, poll ${POLL_MS} ms)`, seen === 'after', seen);

  await OpenFeature.close();
  console.log(failures.length ? `node-web: ${failures.length} failed` : 'node-web: all checks passed');
  return failures.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error('node-web: test crashed:', err);
    process.exit(1);
  },
);
