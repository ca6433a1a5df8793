// The activity map's page benchmark (not a test): time to first render and to interactive for
// graphs of N nodes in the distribution's headless Chromium, against a baseline measured in the
// same page: fetching and parsing the same /graph answer.
//
//   node tests/browser/bench.mjs [NODES...]        e.g. node tests/browser/bench.mjs 1000 10000
//
// Serves pipeline/web (the files the binary embeds) with a synthetic workload-level /graph:
// NODES workloads in NODES/100 namespaces, each calling 5 others (5 × NODES edges), and no alerts.
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";

const web = join(dirname(fileURLToPath(import.meta.url)), "../../pipeline/web");
const files = {
  "/": ["text/html", readFileSync(join(web, "index.html"))],
  "/style.css": ["text/css", readFileSync(join(web, "style.css"))],
  "/app.js": ["text/javascript", readFileSync(join(web, "dist/app.js"))],
};
const sizes = process.argv.slice(2).map(Number).filter((n) => n > 0);
if (sizes.length === 0) sizes.push(1000, 10000);
const now = Date.UTC(2026, 0, 1, 1);

function graphOf(nodes) {
  const name = (i) => `workload:ns${Math.floor(i / 100)}/Deployment/app-${i}`;
  const edges = [];
  for (let i = 0; i < nodes; i++) {
    for (let k = 1; k <= 5; k++) {
      const j = (i * 7 + k * 13) % nodes;
      if (j === i) continue;
      edges.push({ level: "workload", present: true, src: name(i), dst: name(j), dst_port: 8000 + k, protocol: 6, window_ms: 300000, flows: 10 + k, bytes_out: 1000 * k, bytes_in: 5000, packets_out: 10, packets_in: 10, first_seen_ms: now - 200000, last_seen_ms: now, event_time_ms: now });
    }
  }
  return JSON.stringify({ at_ms: now, at: new Date(now).toISOString(), level: "workload", latest_ms: now, oldest_ms: now - 900000, retention_ms: 900000, window_ms: 300000, workers: 1, peers: 1, edges });
}

let body = "";
const server = createServer((req, res) => {
  const path = req.url.split("?")[0];
  if (files[path]) {
    res.writeHead(200, { "content-type": files[path][0] });
    return res.end(files[path][1]);
  }
  if (path === "/graph") {
    res.writeHead(200, { "content-type": "application/json" });
    return res.end(body);
  }
  if (path === "/alerts") {
    res.writeHead(200, { "content-type": "application/json" });
    return res.end(JSON.stringify({ at_ms: now, latest_ms: now, retention_ms: 900000, alerts: [] }));
  }
  res.writeHead(404);
  res.end("{}");
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const url = `http://127.0.0.1:${server.address().port}/`;

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=1400,900"],
  defaultViewport: { width: 1400, height: 900 },
});
console.log("| nodes | edges | /graph | fetch + parse (baseline) | first render | vs baseline | search → redrawn | vs baseline |");
console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
try {
  for (const nodes of sizes) {
    body = graphOf(nodes);
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    const started = Date.now();
    await page.goto(`${url}#level=workload`, { waitUntil: "load" });
    await page.waitForFunction(() => window.peergraph && window.peergraph.ready, { timeout: 600000, polling: 50 });
    // First render: navigation to the first frame drawn after the graph was built.
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r())));
    const firstRender = Date.now() - started;
    const shown = await page.evaluate(() => [window.peergraph.graph.order, window.peergraph.graph.size]);
    // Interactive: a search re-renders the map; timed until the next frame.
    const search = await page.evaluate(async () => {
      const t = performance.now();
      const input = document.getElementById("search");
      input.value = "app-42";
      input.dispatchEvent(new Event("input"));
      await new Promise((r) => requestAnimationFrame(() => r()));
      return performance.now() - t;
    });
    const baseline = await page.evaluate(async () => {
      const t = performance.now();
      const answer = await (await fetch("graph?level=workload&at=now")).json();
      return [performance.now() - t, answer.edges.length];
    });
    if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
    if (shown[0] !== nodes) throw new Error(`the map shows ${shown[0]} nodes, not ${nodes}`);
    const mb = (body.length / 1e6).toFixed(1);
    console.log(`| ${nodes} | ${shown[1]} | ${mb} MB | ${baseline[0].toFixed(0)} ms | ${firstRender} ms | ${(firstRender / baseline[0]).toFixed(1)} | ${search.toFixed(0)} ms | ${(search / baseline[0]).toFixed(2)} |`);
    await page.close();
  }
} finally {
  await browser.close();
  server.close();
}
