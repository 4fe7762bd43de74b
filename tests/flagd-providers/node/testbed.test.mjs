// The flagd testbed's own gherkin suites (flagd.feature and flagd-json-evaluator.feature) through
// the stock Node flagd provider in-process and through OFREP, from one live key-less namespace
// that holds the testbed's flag files, imported as one flagd document. Every case is asked both
// ways: each case OFREP answers as the testbed says must be answered so by the provider too, and
// any case neither answers so is named ("both": OFREP and the provider alike differ from the
// testbed). A step this runner does not know fails its scenario, so
// nothing is skipped unseen. The reconnect suite (flagd-reconnect.feature) is not run here:
// in_process.test.mjs kills the provider's node and checks the same behaviour.
//
// Environment (set by ../run.sh): TESTBED (the testbed's directory: flags/, gherkin/),
// ADDRESSES, CA, NS (a new key-less namespace), ADMIN_URL, TOKEN, OFREP_URL, as for
// in_process.test.mjs; NODE_EXTRA_CA_CERTS=CA for fetch.
import { OpenFeature, ProviderEvents } from '@openfeature/server-sdk';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { admin, env, inProcessProvider, sleep } from './common.mjs';

const testbed = env('TESTBED');
const ns = env('NS');

// The testbed's flag files as one document (changing-flag-bar.json is the other state of
// changing-flag, written by the change-event scenario).
const document = { flags: {}, $evaluators: {} };
for (const file of readdirSync(join(testbed, 'flags')).sort()) {
  if (!file.endsWith('.json') || file === 'changing-flag-bar.json') continue;
  const part = JSON.parse(readFileSync(join(testbed, 'flags', file), 'utf8'));
  for (const [section, entries] of Object.entries(part)) {
    if (!(section in document)) continue; // "$schema"
    for (const [key, value] of Object.entries(entries)) {
      if (key in document[section]) throw new Error(`${file}: ${section}.${key} is in two files`);
      document[section][key] = value;
    }
  }
}
admin('PUT', `/v1/namespaces/${ns}`, { description: 'flagd testbed' }).catch(() => {});
const imported = await admin('PUT', `/v1/namespaces/${ns}/flagd`, document);
for (const w of imported.warnings ?? []) console.log(`import warning: ${w.path}: ${w.message}`);
console.log(`imported ${Object.keys(document.flags).length} testbed flags at revision ${imported.revision}`);
const sdkKey = (await admin('POST', `/v1/namespaces/${ns}/sdk-keys`, { name: 'testbed' })).secret;

await OpenFeature.setProviderAndWait(inProcessProvider(ns));
const client = OpenFeature.getClient();

// Gherkin, as far as these suites use it: scenarios and outlines, steps, and examples tables.
const parseFeature = (text) => {
  const scenarios = [];
  let background = [];
  let current = null;
  let table = null;
  const finish = () => {
    if (!current) return;
    if (!current.outline) scenarios.push({ name: current.name, steps: current.steps });
    for (const row of current.rows) {
      const fill = (s) => s.replace(/<([^>]+)>/g, (_, col) => row[col] ?? `<${col}>`);
      scenarios.push({ name: `${current.name} [${Object.values(row).join(', ')}]`, steps: current.steps.map(fill) });
    }
  };
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith('@') || line.startsWith('Feature:')) continue;
    let m;
    if ((m = line.match(/^Background:/))) {
      finish();
      current = { name: 'background', outline: false, steps: background, rows: [], background: true };
    } else if ((m = line.match(/^Scenario( Outline)?:\s*(.*)$/))) {
      if (current && !current.background) finish();
      current = { name: m[2], outline: Boolean(m[1]), steps: [], rows: [] };
      table = null;
    } else if (line.startsWith('Examples:')) {
      table = [];
    } else if (line.startsWith('|')) {
      const cells = line.slice(1, -1).split('|').map((c) => c.trim());
      if (table.length === 0) table.push(cells);
      else current.rows.push(Object.fromEntries(table[0].map((h, i) => [h, cells[i]])));
    } else if ((m = line.match(/^(Given|When|Then|And|But)\s+(.*)$/))) {
      current.steps.push(m[2]);
    } else {
      throw new Error(`gherkin line not understood: ${line}`);
    }
  }
  finish();
  return { background: background.filter((s) => s !== 'a flagd provider is set'), scenarios };
};

// OFREP as a typed OpenFeature call would see it: an error or a value of another type gives the
// caller's default.
const ofrepUrl = env('OFREP_URL');
const throughOfrep = async (kind, key, fallback, context) => {
  const r = await fetch(`${ofrepUrl}/ofrep/v1/evaluate/flags/${key}?min_revision=${imported.revision}`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${sdkKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ context }),
    signal: AbortSignal.timeout(10_000),
  }).then((res) => res.json());
  if (r.errorCode || r.value === undefined || r.value === null) {
    return { value: fallback, reason: r.errorCode ? 'ERROR' : r.reason };
  }
  const fits = { boolean: typeof r.value === 'boolean', string: typeof r.value === 'string' }[kind] ??
    (typeof r.value === 'number' && (kind === 'float' || Number.isInteger(r.value)));
  return fits ? { value: r.value, reason: r.reason } : { value: fallback, reason: 'ERROR' };
};
const throughProvider = async (kind, key, fallback, context) => {
  const call = { boolean: 'getBooleanDetails', string: 'getStringDetails' }[kind] ?? 'getNumberDetails';
  const d = await client[call](key, fallback, context);
  return { value: d.value, reason: d.reason };
};
const typed = (kind, text) => {
  const v = JSON.parse(text);
  // The zero-value steps quote every value ("true", "0.0").
  if (typeof v !== 'string' || kind === 'string') return v;
  return kind === 'boolean' ? v === 'true' : Number(v);
};

// One scenario's steps, run; a list of what went wrong (empty when it passed).
const run = async (steps) => {
  const faults = [];
  let ask = null;
  const context = {};
  const answers = async () => {
    if (!ask) throw new Error('a check before any evaluation');
    if (!ask.answers) {
      ask.answers = {
        ofrep: await throughOfrep(ask.kind, ask.key, ask.fallback, context),
        provider: await throughProvider(ask.kind, ask.key, ask.fallback, context),
      };
    }
    return ask.answers;
  };
  const expect = async (field, want) => {
    const got = await answers();
    for (const side of ['ofrep', 'provider']) {
      if (got[side][field] !== want) faults.push({ side, text: `${field} ${JSON.stringify(got[side][field])}, not ${JSON.stringify(want)}` });
    }
  };
  let handler = null;
  for (const step of steps) {
    let m;
    if ((m = step.match(/^an? (?:zero-value )?(boolean|string|integer|float) flag with key "([^"]+)" is evaluated with default value (.+)$/))) {
      ask = { kind: m[1], key: m[2], fallback: typed(m[1], m[3]) };
    } else if ((m = step.match(/^a context containing a key "([^"]+)", with value (.+)$/))) {
      context[m[1]] = JSON.parse(m[2]);
    } else if ((m = step.match(/^a context containing a nested property with outer key "([^"]+)" and inner key "([^"]+)", with value (.+)$/))) {
      context[m[1]] = { ...(context[m[1]] ?? {}), [m[2]]: JSON.parse(m[3]) };
    } else if ((m = step.match(/^a context containing a targeting key with value (.+)$/))) {
      context.targetingKey = JSON.parse(m[1]);
    } else if ((m = step.match(/^the returned value should be (.+)$/))) {
      await expect('value', JSON.parse(m[1]));
    } else if ((m = step.match(/^the returned reason should be (.+)$/))) {
      await expect('reason', JSON.parse(m[1]));
    } else if ((m = step.match(/^the resolved (boolean|string|integer|float) zero-value should be (.+)$/))) {
      await expect('value', typed(m[1], m[2]));
    } else if ((m = step.match(/^a (PROVIDER_READY|PROVIDER_CONFIGURATION_CHANGED) handler is added$/))) {
      const event = m[1] === 'PROVIDER_READY' ? ProviderEvents.Ready : ProviderEvents.ConfigurationChanged;
      handler = { runs: [] };
      const h = handler;
      h.remove = () => client.removeHandler(event, h.fn);
      h.fn = (details) => h.runs.push(details ?? {});
      client.addHandler(event, h.fn);
    } else if ((m = step.match(/^the (PROVIDER_READY|PROVIDER_CONFIGURATION_CHANGED) handler must run$/))) {
      const t0 = Date.now();
      while (handler.runs.length === 0 && Date.now() < t0 + 10_000) await sleep(10);
      if (handler.runs.length === 0) faults.push({ side: 'provider', text: `${m[1]} handler did not run within 10 s` });
    } else if ((m = step.match(/^a flag with key "([^"]+)" is modified$/))) {
      const now = await throughOfrep('string', m[1], '', {});
      const other = now.value === 'foo' ? 'bar' : 'foo';
      await admin('PATCH', `/v1/namespaces/${ns}/flags/${m[1]}`, { defaultVariant: other });
    } else if ((m = step.match(/^the event details must indicate "([^"]+)" was altered$/))) {
      const changed = handler.runs.flatMap((d) => d.flagsChanged ?? []);
      if (!changed.includes(m[1])) faults.push({ side: 'provider', text: `flagsChanged ${JSON.stringify(changed)} lacks ${m[1]}` });
    } else {
      faults.push({ side: 'runner', text: `step not understood: ${step}` });
    }
  }
  handler?.remove();
  return faults;
};

let total = 0;
let ofrepPasses = 0;
let bothPass = 0;
const providerOnly = [];
const failures = [];
for (const file of ['flagd.feature', 'flagd-json-evaluator.feature']) {
  const { background, scenarios } = parseFeature(readFileSync(join(testbed, 'gherkin', file), 'utf8'));
  for (const s of scenarios) {
    total += 1;
    const faults = await run([...background, ...s.steps]);
    const sides = new Set(faults.map((f) => f.side));
    const detail = faults.map((f) => `${f.side}: ${f.text}`).join('; ');
    const ofrepOk = !sides.has('ofrep') && !sides.has('runner');
    const providerOk = !sides.has('provider') && !sides.has('runner');
    if (ofrepOk) ofrepPasses += 1;
    if (ofrepOk && providerOk) bothPass += 1;
    if (sides.has('runner') || (ofrepOk && !providerOk)) failures.push(`${file}: ${s.name}: ${detail}`);
    if (!ofrepOk && providerOk) providerOnly.push(`${file}: ${s.name}: ${detail}`);
    if (!ofrepOk && !providerOk) console.log(`neither: ${file}: ${s.name}: ${detail}`);
    const mark = ofrepOk && providerOk ? 'ok   ' : !ofrepOk && !providerOk && !sides.has('runner') ? 'both ' : 'FAIL ';
    console.log(`${mark}${file}: ${s.name}`);
  }
}
for (const p of providerOnly) console.log(`provider only: ${p}`);
await OpenFeature.close();
console.log(`${total} testbed scenarios: ${ofrepPasses} pass through OFREP, ${bothPass} of them through the provider too`);
for (const f of failures) console.error(`FAIL ${f}`);
if (failures.length || ofrepPasses === 0) {
  console.error(`${failures.length} testbed scenarios pass through OFREP but not through the Node provider, or have a step this runner does not know`);
  process.exit(1);
}
console.log('all passed');
process.exit(0);
