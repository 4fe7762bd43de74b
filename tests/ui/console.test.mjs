// The web console in a real browser (Playwright driving Debian's Chromium) against a real local
// 3-node cluster started by run.sh. Every step asserts what the page shows; a screenshot of
// each page goes to $FLAGSTAFF_SCREENSHOTS. Exits non-zero on the first failure.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const urls = process.env.FLAGSTAFF_URLS.split(" ");
const token = process.env.FLAGSTAFF_TOKEN;
const clusterLog = process.env.FLAGSTAFF_CLUSTER_LOG;
const shots = process.env.FLAGSTAFF_SCREENSHOTS;
mkdirSync(shots, { recursive: true });

const ns = "console-test";
const flag = "new-checkout";
const t0 = Date.now();
const step = (what) => console.log(`-- [${((Date.now() - t0) / 1000).toFixed(1)}s] ${what}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

async function shot(page, name) {
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

/** Every form control on the page has an accessible name (a label or aria-label). */
async function assertLabelled(page, name) {
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input:not([type=hidden]), select, textarea")]
      .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label"))
      .map((el) => el.outerHTML.slice(0, 80)),
  );
  assert.deepEqual(unlabelled, [], `${name}: controls without a label`);
}

/**
 * Types into a field of a form with live validation and waits until the node's answer has been
 * swapped in, so that no later layout change races the next click.
 */
async function fillLive(page, locator, value, select = false) {
  const live = page.locator("#live-faults");
  await live.evaluate((el) => { el.innerHTML = ""; });
  if (select) await locator.selectOption(value);
  else await locator.fill(value);
  await live.locator("> *").first().waitFor({ timeout: 10_000 });
  await page.waitForFunction(() => !document.querySelector(".htmx-request"));
}

/** The API's own answer, for checks the page must agree with. */
async function apiGet(path) {
  const r = await fetch(`${urls[0]}${path}`, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(r.status, 200, `GET ${path}`);
  return r.json();
}

let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  const pageErrors = [];
  context.on("weberror", (e) => pageErrors.push(String(e.error())));

  step("a console page without a session goes to sign-in");
  await page.goto(`${urls[0]}/ui/namespaces`);
  assert.match(page.url(), /\/ui\/login\?next=/);
  await assertLabelled(page, "login");
  await shot(page, "01-sign-in");

  step("a wrong token is refused");
  await page.getByLabel("Admin token").fill("not-the-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "not an admin token" }).waitFor();

  step("sign in");
  await page.getByLabel("Admin token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/\/ui\/namespaces$/);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "flagstaff_session");
  assert.ok(session, "session cookie set");
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");

  step("create a namespace");
  await page.getByLabel("Name").fill(ns);
  await page.getByLabel("Description", { exact: true }).fill("browser test");
  await page.getByRole("button", { name: "Create namespace" }).click();
  await page.waitForURL(new RegExp(`/ui/ns/${ns}/flags$`));
  await page.getByText("No flags yet").waitFor();

  step("create a flag");
  await page.getByRole("link", { name: "New flag" }).click();
  await assertLabelled(page, "new flag");
  await fillLive(page, page.getByLabel("Key", { exact: true }), flag);
  await fillLive(page, page.getByLabel("Description", { exact: true }), "The new checkout flow");
  await fillLive(page, page.getByLabel("Tags"), "checkout, web");
  await shot(page, "02-new-flag");
  await page.getByRole("button", { name: "Save", exact: true }).click();
  await page.waitForURL(new RegExp(`/ui/ns/${ns}/flags/${flag}\\?saved=`));
  let api = await apiGet(`/v1/namespaces/${ns}/flags/${flag}`);
  assert.equal(api.definition.state, "ENABLED");
  assert.deepEqual(api.definition.tags, ["checkout", "web"]);

  step("the flag list, filtered by tag and search");
  await page.goto(`${urls[0]}/ui/ns/${ns}/flags?tag=checkout`);
  const row = page.locator(`tr[data-flag="${flag}"]`);
  await row.waitFor();
  await assertLabelled(page, "flags");
  await shot(page, "03-flags");
  await page.goto(`${urls[0]}/ui/ns/${ns}/flags?q=nothing-matches`);
  await page.getByText("No flag matches").waitFor();

  step("kill switch: disable with confirmation on node 1");
  await page.goto(`${urls[0]}/ui/ns/${ns}/flags`);
  await row.getByRole("link", { name: "Disable" }).click();
  await page.getByText(`Disable flag ${flag}`).waitFor();
  await shot(page, "04-confirm-disable");
  await page.getByRole("button", { name: "Disable" }).click();
  await page.waitForURL(new RegExp(`/ui/ns/${ns}/flags\\?changed=`));
  await row.locator(".state").filter({ hasText: "DISABLED" }).waitFor();

  step("node 2 serves the new state to the same session");
  await page.goto(`${urls[1]}/ui/ns/${ns}/flags`);
  assert.match(page.url(), new RegExp(`^${urls[1]}/ui/ns/${ns}/flags`), "no sign-in needed on node 2");
  assert.equal((await row.locator(".state").textContent()).trim(), "DISABLED");
  assert.match(await page.locator(".who").textContent(), /node 2/);
  await shot(page, "05-flags-on-node-2");
  await row.getByRole("link", { name: "Enable" }).click();
  await page.getByRole("button", { name: "Enable" }).click();
  await row.locator(".state").filter({ hasText: "ENABLED" }).waitFor();

  step("an invalid rule shows each fault with its path, as you type and on Check");
  api = await apiGet(`/v1/namespaces/${ns}/flags/${flag}`);
  await page.goto(`${urls[1]}/ui/ns/${ns}/flags/${flag}`);
  await assertLabelled(page, "editor");
  await fillLive(page, page.locator("#targeting"), '{"if": [{"frobnicate": [{"var": "plan"}]}, "on", "off"]}');
  const live = page.locator("#live-faults");
  await live.locator(".path").first().waitFor({ timeout: 10_000 });
  const liveText = await live.textContent();
  assert.match(liveText, /targeting/, "the live faults name the targeting path");
  await shot(page, "06-invalid-rule");
  await page.getByRole("button", { name: "Check" }).click();
  const faults = page.locator("#faults .faults li");
  await faults.first().waitFor();
  assert.ok((await faults.count()) >= 1);
  assert.match(await page.locator("#faults").textContent(), /targeting/);
  const afterInvalid = await apiGet(`/v1/namespaces/${ns}/flags/${flag}`);
  assert.equal(afterInvalid.version, api.version, "nothing invalid was saved");

  step("the rule builder writes a rule; save it");
  await page.locator("summary", { hasText: "Rule builder" }).click();
  assert.equal(await page.locator("details").evaluate((d) => d.open), true, "the builder opened");
  await fillLive(page, page.getByLabel("When"), "ends_with", true);
  await fillLive(page, page.getByLabel("Attribute", { exact: false }), "email");
  await fillLive(page, page.getByLabel("Values", { exact: false }), "@example.com");
  await fillLive(page, page.getByLabel("Then variant"), "on");
  await fillLive(page, page.getByLabel("Else variant"), "off");
  await page.getByRole("button", { name: "Write rule" }).click();
  await page.getByText("Targeting replaced by the rule builder").waitFor();
  assert.match(await page.locator("#targeting").inputValue(), /ends_with/);
  await page.getByRole("button", { name: "Save", exact: true }).click();
  await page.waitForURL(/\?saved=/);
  api = await apiGet(`/v1/namespaces/${ns}/flags/${flag}`);
  assert.deepEqual(api.definition.targeting, {
    if: [{ ends_with: [{ var: "email" }, "@example.com"] }, "on", "off"],
  });

  step("evaluation preview: the value, variant and reason an SDK gets");
  await page.goto(`${urls[2]}/ui/ns/${ns}/flags/${flag}/preview`);
  await assertLabelled(page, "preview");
  await page.getByLabel("Context attributes", { exact: false }).fill('{"email": "ana@example.com"}');
  await page.getByRole("button", { name: "Evaluate" }).click();
  await page.locator("#result").waitFor();
  assert.equal((await page.locator("#result-value").textContent()).trim(), "true");
  assert.equal((await page.locator("#result-variant").textContent()).trim(), "on");
  assert.equal((await page.locator("#result-reason").textContent()).trim(), "TARGETING_MATCH");
  await shot(page, "07-preview");
  await page.getByLabel("Context attributes", { exact: false }).fill('{"email": "bob@other.org"}');
  await page.getByRole("button", { name: "Evaluate" }).click();
  await page.locator("#result-variant").filter({ hasText: "off" }).waitFor();

  step("a conflicting edit from two pages is shown, not overwritten");
  const other = await context.newPage();
  await page.goto(`${urls[0]}/ui/ns/${ns}/flags/${flag}`);
  await other.goto(`${urls[1]}/ui/ns/${ns}/flags/${flag}`);
  await fillLive(other, other.getByLabel("Description", { exact: true }), "Changed in the other tab");
  await other.getByRole("button", { name: "Save", exact: true }).click();
  await other.waitForURL(/\?saved=/);
  await fillLive(page, page.getByLabel("Default variant", { exact: true }), "on");
  await page.getByRole("button", { name: "Save", exact: true }).click();
  await page.getByRole("heading", { name: /^Theirs/ }).waitFor();
  assert.match(await page.locator("main").textContent(), /Changed in the other tab/);
  assert.match(await page.locator("pre.diff").textContent(), /\+\s+"defaultVariant": "on"/);
  api = await apiGet(`/v1/namespaces/${ns}/flags/${flag}`);
  assert.equal(api.definition.description, "Changed in the other tab", "their change kept");
  assert.equal(api.definition.defaultVariant, "off", "mine not written silently");
  await shot(page, "08-conflict");
  await page.getByRole("button", { name: "Edit yours, with theirs beside it" }).click();
  await page.getByText("Saving it replaces their version").waitFor();
  assert.match(await page.locator("pre.code").first().textContent(), /Changed in the other tab/, "theirs shown beside the editor");
  await fillLive(page, page.getByLabel("Description", { exact: true }), "Changed in the other tab");
  await page.getByRole("button", { name: "Save", exact: true }).click();
  await page.waitForURL(/\?saved=/);
  api = await apiGet(`/v1/namespaces/${ns}/flags/${flag}`);
  assert.equal(api.definition.defaultVariant, "on", "mine re-applied");
  assert.equal(api.definition.description, "Changed in the other tab", "theirs kept");
  await other.close();

  step("the history shows each change with who made it and a diff");
  await page.goto(`${urls[0]}/ui/ns/${ns}/flags/${flag}/history`);
  const changes = page.locator("section.change");
  assert.ok((await changes.count()) >= 6, `history has ${await changes.count()} changes`);
  assert.match(await changes.first().textContent(), /by admin/);
  assert.match(await changes.first().locator(".dadd").first().textContent(), /defaultVariant": "on"/);
  assert.match(await changes.last().textContent(), /created/);
  await shot(page, "09-history");

  step("segments and SDK keys");
  await page.goto(`${urls[0]}/ui/ns/${ns}/new-segment`);
  await fillLive(page, page.getByLabel("Key", { exact: true }), "staff");
  await page.getByRole("button", { name: "Save" }).click();
  await page.waitForURL(new RegExp(`/ui/ns/${ns}/segments$`));
  await page.getByRole("link", { name: "staff", exact: true }).waitFor();
  await shot(page, "10-segments");
  await page.goto(`${urls[0]}/ui/ns/${ns}/keys`);
  await page.getByLabel("Name", { exact: false }).fill("web");
  await page.getByRole("button", { name: "Create key" }).click();
  const secret = await page.getByLabel("Secret").inputValue();
  assert.ok(secret.length >= 20, "the secret is shown once");
  await shot(page, "11-sdk-key");
  const evalResp = await fetch(`${urls[0]}/ofrep/v1/evaluate/flags/${flag}`, {
    method: "POST", headers: { Authorization: `Bearer ${secret}`, "Content-Type": "application/json" },
    body: JSON.stringify({ context: { email: "ana@example.com" } }),
  });
  assert.equal(evalResp.status, 200, "the new key evaluates");
  await page.reload();
  assert.equal(await page.getByLabel("Secret").count(), 0, "a reload does not show it again");

  step("read pages work without JavaScript, and on a phone screen");
  const plain = await browser.newContext({ javaScriptEnabled: false, viewport: { width: 390, height: 844 } });
  await plain.addCookies([session]);
  const p2 = await plain.newPage();
  for (const path of [`/ui/ns/${ns}/flags`, `/ui/ns/${ns}/flags/${flag}/history`, "/ui/cluster"]) {
    await p2.goto(`${urls[2]}${path}`);
    assert.doesNotMatch(p2.url(), /login/, `${path} without JS`);
    const overflow = await p2.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `${path}: the page is ${overflow}px wider than a phone screen`);
  }
  await p2.goto(`${urls[2]}/ui/ns/${ns}/flags`);
  await p2.locator(`tr[data-flag="${flag}"]`).waitFor();
  await shot(p2, "12-flags-phone-no-js");
  await plain.close();

  step("an experiment's results page: charts, the split check, stop and ship");
  const send = async (method, path, body) => {
    const r = await fetch(`${urls[0]}${path}`, {
      method,
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const text = await r.text();
    assert.equal(r.status, 200, `${method} ${path}: ${text}`);
    return JSON.parse(text);
  };
  await send("PUT", `/v1/namespaces/${ns}/flags/checkout-test`, {
    state: "ENABLED", variants: { old: "v1", new: "v2" }, defaultVariant: "old",
    targeting: { fractional: [["old", 50], ["new", 50]] },
    experiment: { control: "old", metrics: ["purchase"] },
  });
  const track = [];
  for (let i = 0; i < 300; i += 1) {
    if (i % 4 === 0) track.push({ event: "purchase", value: 12.5, context: { targetingKey: `user-${i}` } });
  }
  await send("POST", `/v1/namespaces/${ns}/events`, { batch: "browser-1", track });
  for (let i = 0; i < 300; i += 1) {
    await fetch(`${urls[0]}/ofrep/v1/evaluate/flags/checkout-test?namespace=${ns}`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ context: { targetingKey: `user-${i}` } }),
    });
  }
  // The node's own OFREP exposures reach the log with its next flush (every second).
  for (let tries = 0; ; tries += 1) {
    const r = await apiGet(`/v1/namespaces/${ns}/experiments/checkout-test`);
    const exposed = r.report.arms.reduce((n, a) => n + a.exposures, 0);
    if (exposed === 300) break;
    assert.ok(tries < 100, `exposures recorded: ${exposed} of 300`);
    await new Promise((done) => setTimeout(done, 100));
  }
  await page.goto(`${urls[0]}/ui/ns/${ns}/experiments`);
  await page.getByRole("link", { name: "checkout-test" }).click();
  await page.waitForURL(new RegExp(`/ui/ns/${ns}/experiments/checkout-test$`));
  await page.getByRole("heading", { name: "Metric purchase" }).waitFor();
  assert.ok((await page.locator("svg.chart").count()) >= 1, "charts are drawn");
  await page.locator("#srm").filter({ hasText: "split as configured" }).waitFor();
  await assertLabelled(page, "experiment");
  await shot(page, "12b-experiment");
  await page.getByLabel("Serve to everyone").selectOption("new");
  await page.getByRole("button", { name: "Stop and ship" }).click();
  await page.waitForURL(new RegExp(`/ui/ns/${ns}/experiments/checkout-test\\?control=old$`));
  await page.getByText("stopped", { exact: false }).first().waitFor();
  const shipped = await apiGet(`/v1/namespaces/${ns}/flags/checkout-test`);
  assert.equal(shipped.definition.defaultVariant, "new");
  assert.equal(shipped.definition.experiment, undefined);
  await page.goto(`${urls[0]}/ui/ns/${ns}/flags`);
  await page.getByRole("columnheader", { name: "Last evaluated" }).waitFor();

  step("the cluster page shows a new leader after the leader is killed");
  const status = await apiGet("/v1/cluster");
  const leader = status.leader;
  const watcherUrl = urls.find((u) => !status.members.find((m) => m.id === leader && m.api_addr === u));
  await page.goto(`${watcherUrl}/ui/cluster`);
  await page.locator("#leader").filter({ hasText: `node ${leader}` }).waitFor();
  await shot(page, "13-cluster");
  const line = readFileSync(clusterLog, "utf8").split("\n").find((l) => l.trim().startsWith(`node ${leader} `));
  const pid = Number(/pid (\d+)/.exec(line ?? "")?.[1]);
  assert.ok(pid > 0, `pid of node ${leader} in the cluster log`);
  process.kill(pid, "SIGKILL");
  // The page refreshes itself (htmx, every 2 s); no reload here.
  await page.waitForFunction(
    (old) => {
      const t = document.querySelector("#leader")?.textContent ?? "";
      return /node \d+/.test(t) && !t.includes(`node ${old}`);
    },
    leader,
    { timeout: 20_000 },
  );
  await page.locator(`tr[data-member="${leader}"] .health`).filter({ hasText: "unreachable" }).waitFor({ timeout: 10_000 });
  const newLeader = /node (\d+)/.exec(await page.locator("#leader").textContent())[1];
  await page.locator(`tr[data-member="${newLeader}"] td`, { hasText: /^leader$/ }).waitFor({ timeout: 10_000 });
  step(`leader was node ${leader}; now ${(await page.locator("#leader").textContent()).trim()}`);
  await shot(page, "14-cluster-after-leader-kill");

  step("sign out ends the session in this browser");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(/\/ui\/login/);
  await page.goto(`${watcherUrl}/ui/namespaces`);
  assert.match(page.url(), /\/ui\/login/);
  assert.deepEqual(pageErrors, [], "no script errors in any page");
  await context.close();
} catch (e) {
  failed = true;
  console.error(`FAILED: ${e.stack || e}`);
  // What each open page showed when it failed.
  let n = 0;
  for (const c of browser.contexts()) {
    for (const p of c.pages()) {
      n += 1;
      const text = await p.locator("main").textContent().catch(() => "(no main)");
      console.error(`--- page ${n}: ${p.url()}\n${(text ?? "").replace(/\s+/g, " ").slice(0, 800)}`);
      await p.screenshot({ path: `${shots}/failure-${n}.png`, fullPage: true }).catch(() => {});
    }
  }
} finally {
  await browser.close();
}
console.log(failed ? "console browser tests: FAILED" : `console browser tests: passed; screenshots in ${shots}`);
process.exit(failed ? 1 : 0);
