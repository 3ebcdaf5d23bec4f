// Drives mqlink's web console in Debian's headless Chromium with
// playwright-core, for crates/mqlink-cli/tests/console.rs.
//
// Environment: CONSOLE_URL (the page, with ?token=… when one is set),
// SCREENSHOTS (a directory), COMPONENTS (comma-separated node ids the
// graph must show), STALLING (the node id of the sink whose broker the
// test stops), STALL_SECONDS (run.stall_timeout), CHROMIUM (optional).
//
// It asks the test to stop and resume that broker by writing `pause` and
// `resume` on stdout, and waits for a line on stdin after each. It exits
// non-zero, naming what failed, on any failed check or browser console
// error.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const url = env("CONSOLE_URL");
const shots = env("SCREENSHOTS");
const components = env("COMPONENTS").split(",");
const stalling = env("STALLING");
const stallSeconds = Number(env("STALL_SECONDS"));
mkdirSync(shots, { recursive: true });

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(what) {
  console.log(what);
  const { value, done } = await lines.next();
  if (done || value.trim() !== "ok") throw new Error(`the test did not ${what} (${value})`);
}

const errors = [];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
let failed = null;
const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
page.on("console", (m) => { if (m.type() === "error") errors.push(`console: ${m.text()}`); });
page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
page.on("requestfailed", (r) => errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));

const node = (id) => page.locator(`[data-node="${id}"]`);
const state = (id) => node(id).getAttribute("data-state");
async function records(id) {
  const text = await node(id).innerText();
  const m = text.match(/([\d.]+[kM]?) records/);
  if (!m) throw new Error(`${id} shows no record count: ${text}`);
  const n = parseFloat(m[1]);
  return m[1].endsWith("M") ? n * 1e6 : m[1].endsWith("k") ? n * 1e3 : n;
}
async function until(what, seconds, f) {
  const end = Date.now() + seconds * 1000;
  for (;;) {
    try { if (await f()) return; } catch (e) { if (Date.now() > end) throw e; }
    if (Date.now() > end) throw new Error(`timed out after ${seconds} s waiting for ${what}`);
    await page.waitForTimeout(200);
  }
}
function step(what) { console.error(`console test: ${what}`); }

try {
  await page.goto(url);
  // The token, if any, is gone from the address.
  if (new URL(page.url()).searchParams.has("token")) throw new Error("the token stayed in the address bar");

  step("the graph shows every component");
  await until("the graph", 20, async () => {
    for (const id of components) if ((await node(id).count()) !== 1) return false;
    return true;
  });
  for (const id of components) {
    const s = await state(id);
    if (id.startsWith("sources.") || id.startsWith("sinks.")) {
      await until(`${id} running`, 20, async () => (await state(id)) === "running");
    } else if (!s) {
      throw new Error(`${id} has no state`);
    }
  }
  const edges = await page.locator("#graph svg path").count();
  if (edges < components.length - 1) throw new Error(`only ${edges} edges for ${components.length} nodes`);

  step("counts move");
  for (const id of components.filter((c) => c.startsWith("sources.") || c.startsWith("sinks."))) {
    const first = await records(id);
    await until(`${id} counting up`, 15, async () => (await records(id)) > first);
  }
  await page.screenshot({ path: `${shots}/running.png`, fullPage: true });

  step("a connection's configuration as loaded, its password masked");
  await node("connections.far").click();
  await until("details of the connection", 5, async () => (await page.locator("#details h3").innerText()) === "connections.far");
  const config = await page.locator("#details pre.config").innerText();
  if (!config.includes('"password": "***"') || !config.includes('"keep_alive": 60')) throw new Error(`configuration shown: ${config}`);
  if ((await page.content()).includes(env("SECRET"))) throw new Error("the connection's password is on the page");

  step("keyboard: Tab to a component and open its details");
  await node(stalling).focus();
  await page.keyboard.press("Enter");
  await until("details of the sink", 5, async () => (await page.locator("#details h3").innerText()) === stalling);

  step("the stopped sink turns stalled with its reason");
  await ask("pause");
  const stoppedAt = Date.now();
  // Within the stall timeout, give or take a status tick and a poll.
  await until(`${stalling} stalled`, stallSeconds + 5, async () => (await state(stalling)) === "stalled");
  const took = (Date.now() - stoppedAt) / 1000;
  const reason = await node(stalling).locator("[data-reason]").innerText();
  const waited = reason.match(/\d+ records waiting and none confirmed for (\d+) s/);
  if (!waited || Number(waited[1]) < stallSeconds) throw new Error(`stall reason: ${reason}`);
  const notReady = await page.locator("#not-ready").innerText();
  if (!notReady.includes(`${stalling}: stalled`)) throw new Error(`faults list lacks the stall: ${notReady}`);
  if ((await page.locator("#ready").innerText()) !== "not ready") throw new Error("still shown ready");
  step(`stalled after ${took.toFixed(1)} s (stall timeout ${stallSeconds} s)`);
  await page.screenshot({ path: `${shots}/stalled.png`, fullPage: true });

  step("it recovers after SIGCONT");
  await ask("resume");
  await until(`${stalling} running again`, 60, async () => (await state(stalling)) === "running");
  await until("ready again", 60, async () => (await page.locator("#ready").innerText()) === "ready");

  step("the accounting adds up");
  const sources = components.filter((c) => c.startsWith("sources.")).map((c) => c.slice(8));
  for (const name of sources) {
    const line = page.locator(`#accounting [data-accounting="${name}"]`);
    await until(`accounting of ${name} adding up`, 20, async () => {
      const a = Object.fromEntries(await Promise.all(["received", "acknowledged", "dead-lettered", "skipped", "in-flight"]
        .map(async (k) => [k, Number(await line.getAttribute(`data-${k}`))])));
      const shown = await line.innerText();
      return a.received > 0 && a.received === a.acknowledged + a["dead-lettered"] + a.skipped + a["in-flight"]
        && (await line.getAttribute("data-adds-up")) === "true" && shown.includes("adds up");
    });
  }

  step("the faults table lists the stall warning");
  await until("the stall warning in the faults", 15, async () =>
    (await page.locator("#faults tbody").innerText()).includes("Stalled"));

  step("a typed query returns rows");
  await page.locator("#sql").fill("");
  await page.locator("#sql").focus();
  await page.keyboard.type("SELECT name, status, records FROM system.connector_status ORDER BY name");
  await page.keyboard.press("Control+Enter");
  await until("the result table", 15, async () => (await page.locator("#result-table tbody tr").count()) === sources.length + components.filter((c) => c.startsWith("sinks.")).length);
  const cells = await page.locator("#result-table tbody").innerText();
  for (const id of components.filter((c) => c.startsWith("sources.") || c.startsWith("sinks."))) {
    if (!cells.includes(id.split(".")[1])) throw new Error(`query result lacks ${id}: ${cells}`);
  }
  await page.locator("#result").scrollIntoViewIfNeeded();
  await page.screenshot({ path: `${shots}/recovered.png`, fullPage: true });

  if (errors.length) throw new Error(`browser console errors:\n${errors.join("\n")}`);
  step("all checks passed");
} catch (e) {
  failed = e;
  await page.screenshot({ path: `${shots}/failed.png`, fullPage: true }).catch(() => {});
} finally {
  await browser.close();
}
if (failed) {
  console.error(`console test failed: ${failed.message}`);
  if (errors.length) console.error(errors.join("\n"));
  process.exit(1);
}
process.exit(0);
