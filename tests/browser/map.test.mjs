// The activity map in a real browser: the distribution's Chromium, headless, driven by
// puppeteer-core against `peergraph run` on the real broker (started by
// tests/tests/activity_map.rs, which passes what the simulation did in the environment).
// Exits non-zero with a message on the first failed check; writes screenshots to ARTIFACTS.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import puppeteer from "puppeteer-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env("PEERGRAPH_MAP_URL");
const entity = env("PEERGRAPH_MAP_ENTITY");
const destination = env("PEERGRAPH_MAP_DESTINATION");
const workload = env("PEERGRAPH_MAP_WORKLOAD");
const before = Number(env("PEERGRAPH_MAP_BEFORE"));
const during = Number(env("PEERGRAPH_MAP_DURING"));
const artifacts = env("PEERGRAPH_MAP_ARTIFACTS");
const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(artifacts, { recursive: true });

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  console.log(`ok: ${message}`);
}

const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  // Root in a container: no sandbox. WebGL through SwiftShader (no GPU here).
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=1400,900"],
  defaultViewport: { width: 1400, height: 900 },
});
const errors = [];
try {
  const page = await browser.newPage();
  page.on("console", (message) => message.type() === "error" && errors.push(`console: ${message.text()}`));
  page.on("pageerror", (error) => errors.push(`page: ${error.message}`));

  // 1. The map renders the environment's workloads, at a time during the swap.
  await page.goto(`${url}#at=${during}&level=workload`, { waitUntil: "load" });
  await page.waitForFunction(() => window.peergraph && window.peergraph.ready && window.peergraph.graph.order > 0, { timeout: 30000 });
  const nodes = await page.evaluate(() => window.peergraph.graph.nodes());
  check(nodes.includes(workload), `the workload-level map has ${workload} (${nodes.length} nodes)`);
  check(nodes.filter((n) => n.startsWith("workload:")).length >= 2, "it shows the environment's workloads");

  // Search by label: the directory finds the workload's pods by their `app` label.
  await page.type("#search", "app=web");
  await page.waitForFunction((w) => window.peergraph.state.labelMatches.some((e) => e.workload === w), { timeout: 10000 }, workload);
  const found = await page.evaluate(() => window.peergraph.state.labelMatches.length);
  check(found >= 2, `searching "app=web" finds the workload's pods by label (${found})`);
  await page.evaluate(() => {
    const input = document.getElementById("search");
    input.value = "";
    input.dispatchEvent(new Event("input"));
  });

  // 2. The swapped replica's alert is on the map and in the panel.
  const selector = `#alerts li.open[data-entity="${entity}"][data-detector="peer_unique_destination"]`;
  await page.waitForSelector(selector, { timeout: 30000 });
  const alertText = await page.$eval(selector, (li) => li.textContent);
  check(alertText.includes(destination), `the panel lists the open peer-unique alert on ${entity} naming ${destination}`);
  const marked = await page.evaluate((e) => window.peergraph.state.alerts.some((a) => a.open && a.entity === e), entity);
  check(marked, "the map marks the alerted entity");

  // 3. Clicking it focuses the replica and its peers at entity level: the extra edge is drawn.
  await page.click(selector);
  await page.waitForFunction((e) => window.peergraph.state.level === "entity" && window.peergraph.graph.hasNode(e), { timeout: 30000 }, entity);
  const c2 = `${entity}|${destination}|`;
  const hasC2 = () => page.evaluate((k) => window.peergraph.graph.edges().some((e) => e.startsWith(k)), c2);
  check(await hasC2(), `focused on the alert, the map has the edge ${entity} → ${destination}`);
  const peers = await page.evaluate((prefix) => window.peergraph.graph.nodes().filter((n) => n.startsWith(prefix)).length, entity.replace(/-[^-/]+$/, "-"));
  check(peers >= 2, `the replica's peers are on the map beside it (${peers} replicas)`);
  await page.waitForSelector("#node-peers", { timeout: 10000 });
  const peerLine = await page.$eval("#node-peers", (p) => p.textContent);
  check(peerLine.startsWith("peers (3)"), `its panel names its 3 peers (${peerLine.slice(0, 60)}…)`);
  await new Promise((r) => setTimeout(r, 600)); // the camera's move
  await page.screenshot({ path: join(artifacts, "swapped-replica-alert.png") });

  // 4. Before the swap the malicious edge is not there.
  await page.evaluate(async (t) => {
    const s = window.peergraph.state;
    s.live = false;
    s.at = t;
    await window.peergraph.refresh();
  }, before);
  check(!(await hasC2()), `before the swap (${new Date(before).toISOString()}) there is no edge to ${destination}`);
  await page.screenshot({ path: join(artifacts, "before-swap.png") });

  // 5. Comparing before with during highlights the new edge, and from the replica only it.
  await page.evaluate(async (from, to) => {
    const s = window.peergraph.state;
    document.getElementById("compare").checked = true;
    s.from = from;
    s.at = to;
    await window.peergraph.refresh();
  }, before, during);
  const added = await page.evaluate((e) => {
    const g = window.peergraph.graph;
    return g.edges().filter((k) => g.getEdgeAttribute(k, "status") === "added" && g.source(k) === e).map((k) => g.target(k));
  }, entity);
  check(added.length === 1 && added[0] === destination, `the comparison marks exactly the new edge of the replica as new (${JSON.stringify(added)})`);
  await page.screenshot({ path: join(artifacts, "compare.png") });

  check(errors.length === 0, `no console errors (${JSON.stringify(errors)})`);
} finally {
  await browser.close();
}
