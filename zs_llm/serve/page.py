"""The page `GET /` serves: one row per stream the caller may see, with sparklines of entropy,
logit norm, predictor drift and answer share and the stream's verdict, refreshed every 2 s from
/v1/streams. Self-contained (no external script, font or style). With a keys file, open it as
`/#key=KEY` (the key stays in the fragment, which the browser never sends)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>zs_llm serve: __MODEL__</title>
<style>
body{font:14px system-ui,sans-serif;margin:18px;color:#222;background:#fff}
h1{font-size:18px;margin:0 0 4px}
.sub{color:#666;margin-bottom:12px}
table{border-collapse:collapse}
th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}
th{font-weight:600;color:#444}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.spark{display:flex;align-items:center;gap:6px}
.spark span{font-size:12px;color:#555;min-width:44px;text-align:right}
.v-stable{color:#1a7f37}.v-sharpening{color:#b58100}.v-degenerate,.v-collapsed-constant{color:#c62828}
.v-no-data,.v-no-update{color:#888}
#status{color:#888;font-size:12px;margin-top:8px}
</style></head>
<body>
<h1>zs_llm adapting server</h1>
<div class="sub">model <b>__MODEL__</b>, method <b>__METHOD__</b>: one online stream per tenant</div>
<table id="streams"><thead><tr><th>stream</th><th>problems</th><th>entropy</th><th>logit norm</th>
<th>predictor drift</th><th>answer share</th><th>verdict</th><th>guard</th></tr></thead><tbody></tbody></table>
<div id="status">loading</div>
<script>
const COLORS = {entropy: "#1f77b4", logit_norm: "#9467bd", predictor_drift: "#d62728", answer_share: "#2ca02c"};
const key = new URLSearchParams(location.hash.slice(1)).get("key");
function spark(values, color) {
  const w = 140, h = 30, pts = [];
  const xs = values.map((v, i) => [i, v]).filter(p => p[1] !== null && isFinite(p[1]));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h); svg.setAttribute("class", "sparkline");
  if (xs.length) {
    const lo = Math.min(...xs.map(p => p[1])), hi = Math.max(...xs.map(p => p[1]));
    const n = Math.max(values.length - 1, 1);
    for (const [i, v] of xs) {
      const x = 2 + (w - 4) * i / n, y = hi > lo ? h - 3 - (h - 6) * (v - lo) / (hi - lo) : h / 2;
      pts.push(x.toFixed(1) + "," + y.toFixed(1));
    }
    if (pts.length === 1) pts.push((w - 2) + "," + pts[0].split(",")[1]);
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", pts.join(" ")); line.setAttribute("fill", "none");
    line.setAttribute("stroke", color); line.setAttribute("stroke-width", "2");
    svg.appendChild(line);
  }
  return svg;
}
function cell(tr, values, color) {
  const td = tr.insertCell(), box = document.createElement("div");
  box.className = "spark";
  box.appendChild(spark(values, color));
  const last = values.filter(v => v !== null && isFinite(v)).pop();
  const label = document.createElement("span");
  label.textContent = last === undefined ? "-" : Number(last).toPrecision(3);
  box.appendChild(label); td.appendChild(box);
}
async function refresh() {
  try {
    const r = await fetch("/v1/streams", {headers: key ? {Authorization: "Bearer " + key} : {}});
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.status);
    const tbody = document.querySelector("#streams tbody");
    tbody.replaceChildren();
    for (const s of body.data) {
      const tr = tbody.insertRow();
      tr.dataset.stream = s.id;
      tr.insertCell().textContent = s.id;
      const p = tr.insertCell(); p.textContent = s.problems; p.className = "num";
      for (const k of ["entropy", "logit_norm", "predictor_drift", "answer_share"]) cell(tr, s.series[k], COLORS[k]);
      const v = tr.insertCell(); v.textContent = s.verdict; v.className = "verdict v-" + s.verdict;
      v.title = s.verdict_rule;
      tr.insertCell().textContent = s.guard_events.length ? s.guard_events.length + " rollback(s)" : "-";
    }
    document.getElementById("status").textContent =
      body.data.length + " stream(s), updated " + new Date().toLocaleTimeString();
  } catch (e) {
    document.getElementById("status").textContent = "cannot read /v1/streams: " + e.message;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body></html>
"""
