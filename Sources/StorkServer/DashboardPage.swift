// MARK: - DashboardPage
//
// `GET /dashboard`: one HTML document with its style and script inline, nothing loaded from elsewhere. Every second
// it reads the admin API of the node that served it (`/v1/cluster`, `/v1/resources` in both scopes, `/v1/moves`,
// `/v1/stats`) and redraws; rates are the counters' deltas over the last few reads. It shows this node's view:
// owners for every resource, states for the resources that run here (other nodes' dashboards show theirs).
// Elements the browser test reads carry ids and data attributes: `body[data-loaded]`,
// `#members tr[data-member][data-status]`, `#resources .node-group[data-node] [data-resource][data-state]`,
// `#moves li[data-resource][data-from][data-to]`, `#rates [data-rate][data-value]`.

enum DashboardPage {
    static let html = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>Stork dashboard</title>
        <link rel="icon" href="data:,">
        <style>
          :root { --bg: #f4f5f7; --card: #fff; --ink: #1c2430; --muted: #6a7380; --line: #dfe3e8;
                  --ok: #1f9d55; --warn: #b7791f; --bad: #c53030; --off: #718096; --info: #2b6cb0; }
          * { box-sizing: border-box; }
          body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg); color: var(--ink); }
          header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 8px 20px; padding: 14px 24px; background: #172030; color: #fff; }
          header h1 { font-size: 18px; margin: 0; font-weight: 600; }
          header .meta { color: #b8c2d0; font-variant-numeric: tabular-nums; }
          header .meta b { color: #fff; font-weight: 600; }
          header .spacer { flex: 1; }
          main { display: grid; grid-template-columns: repeat(12, 1fr); align-items: start; gap: 16px; padding: 16px 24px 24px; }
          section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; min-width: 0; }
          section h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); margin: 0 0 8px; font-weight: 600; }
          #summary { grid-column: span 12; display: grid; grid-template-columns: repeat(6, 1fr); gap: 12px; background: none; border: 0; padding: 0; }
          .stat { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
          .stat .label { color: var(--muted); font-size: 12px; }
          .stat .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; white-space: nowrap; }
          .stat .value.small { font-size: 18px; line-height: 33px; }
          .stat svg { display: block; width: 100%; height: 26px; margin-top: 2px; }
          .stat polyline { fill: none; stroke: var(--info); stroke-width: 1.5; }
          #members-card { grid-column: span 5; }
          #moves-card { grid-column: span 7; }
          #resources-card { grid-column: span 8; }
          #rates-card { grid-column: span 4; }
          table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
          th { text-align: left; font-weight: 600; color: var(--muted); font-size: 12px; border-bottom: 1px solid var(--line); padding: 4px 8px 4px 0; }
          td { border-bottom: 1px solid #eef0f3; padding: 5px 8px 5px 0; }
          td.num, th.num { text-align: right; }
          .pill { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; font-weight: 600; color: #fff; background: var(--off); }
          .pill.alive, .pill.running, .pill.connected, .pill.polling, .pill.ready { background: var(--ok); }
          .pill.suspect, .pill.starting, .pill.connecting, .pill.claiming, .pill.acquiring, .pill.handling, .pill.backoff, .pill.joining { background: var(--warn); }
          .pill.dead, .pill.failed, .pill.offline { background: var(--bad); }
          .pill.left, .pill.terminating, .pill.leaving { background: var(--off); }
          .pill.placed { background: #e2e8f0; color: var(--ink); }
          .self { color: var(--info); font-size: 12px; margin-left: 4px; }
          .groups { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 12px; }
          .node-group { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
          .node-group h3 { font-size: 14px; margin: 0 0 6px; display: flex; justify-content: space-between; }
          .node-group h3 .count { color: var(--muted); font-weight: 400; }
          .node-group ul { list-style: none; margin: 0; padding: 0; display: flex; flex-wrap: wrap; gap: 4px; }
          .res { border: 1px solid var(--line); border-radius: 4px; padding: 1px 6px; font-size: 12px; display: inline-flex; gap: 6px; align-items: center; }
          .res .dot { width: 8px; height: 8px; border-radius: 50%; background: var(--off); }
          .res.running .dot, .res.connected .dot, .res.polling .dot { background: var(--ok); }
          .res.claiming .dot, .res.acquiring .dot, .res.handling .dot, .res.starting .dot, .res.connecting .dot, .res.backoff .dot { background: var(--warn); }
          .res.failed .dot { background: var(--bad); }
          .res.placed .dot { background: #cbd5e0; }
          .res .conn { color: var(--muted); }
          #moves { list-style: none; margin: 0; padding: 0; max-height: 260px; overflow: auto; font-variant-numeric: tabular-nums; }
          #moves li { padding: 3px 0; border-bottom: 1px solid #eef0f3; display: grid; grid-template-columns: 70px 1fr 1.5fr auto; gap: 8px; }
          #moves .time, #moves .why, .empty { color: var(--muted); }
          .arrow { color: var(--muted); padding: 0 4px; }
          .legend { color: var(--muted); font-size: 12px; margin-top: 8px; }
        </style>
        </head>
        <body data-loaded="false">
        <header>
          <h1>Stork</h1>
          <span class="meta" id="cluster-name"></span>
          <span class="meta">node <b id="node-name">…</b> <span id="node-address"></span></span>
          <span id="node-status" class="pill">loading</span>
          <span class="meta" id="view"></span>
          <span class="spacer"></span>
          <span class="meta" id="updated"></span>
        </header>
        <main>
          <section id="summary">
            <div class="stat"><div class="label">members alive</div><div class="value" id="s-members">–</div></div>
            <div class="stat"><div class="label">resources (running here)</div><div class="value" id="s-resources">–</div></div>
            <div class="stat"><div class="label">NATS messages in /s</div><div class="value" id="s-in">–</div><svg id="spark-in" viewBox="0 0 60 26" preserveAspectRatio="none"><polyline/></svg></div>
            <div class="stat"><div class="label">NATS messages out /s</div><div class="value" id="s-out">–</div><svg id="spark-out" viewBox="0 0 60 26" preserveAspectRatio="none"><polyline/></svg></div>
            <div class="stat"><div class="label">NATS bytes in / out /s</div><div class="value small" id="s-bytes">–</div></div>
            <div class="stat"><div class="label">NATS connections</div><div class="value" id="s-connections">–</div></div>
          </section>
          <section id="members-card"><h2>Members</h2>
            <table><thead><tr><th>name</th><th>address</th><th>status</th><th class="num">incarnation</th><th class="num">resources</th></tr></thead>
            <tbody id="members"></tbody></table>
          </section>
          <section id="moves-card"><h2>Recent moves</h2><ul id="moves"></ul></section>
          <section id="resources-card"><h2>Resources by node</h2><div class="groups" id="resources"></div>
            <div class="legend">Owners as this node's view places them; states for the resources that run on this node
            (a node's own dashboard shows its states). Connector status follows the state when a connector runs the resource.</div>
          </section>
          <section id="rates-card"><h2>Counters</h2>
            <table><thead><tr><th>counter</th><th class="num">total</th><th class="num">per second</th></tr></thead>
            <tbody id="rates"></tbody></table>
          </section>
        </main>
        <script>
        "use strict";
        const WINDOW = 5;          // rates over the last five reads (about five seconds)
        const SPARK = 60;          // sparkline points
        const samples = [];        // the last reads of /v1/stats
        const sparks = { in: [], out: [] };

        function el(tag, attrs, ...children) {
          const e = document.createElement(tag);
          for (const [k, v] of Object.entries(attrs || {})) {
            if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
          }
          for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
          return e;
        }
        function pill(text, kind) { return el("span", { class: "pill " + (kind || text) }, text); }
        function replace(id, nodes) { document.getElementById(id).replaceChildren(...nodes); }
        function text(id, value) { document.getElementById(id).textContent = value; }
        function clock(iso) { const d = new Date(iso); return isNaN(d) ? "" : d.toLocaleTimeString([], { hour12: false }); }
        function human(n) {
          if (n >= 1e9) return (n / 1e9).toFixed(1) + " G";
          if (n >= 1e6) return (n / 1e6).toFixed(1) + " M";
          if (n >= 1e4) return (n / 1e3).toFixed(1) + " k";
          return n >= 100 || Number.isInteger(n) ? Math.round(n).toString() : n.toFixed(1);
        }
        async function get(path) {
          const r = await fetch(path, { cache: "no-store" });
          if (!r.ok) throw new Error(path + ": " + r.status);
          return r.json();
        }

        function rate(source, counter) {
          if (samples.length < 2) return null;
          const first = samples[0], last = samples[samples.length - 1];
          const seconds = last.time - first.time;
          const a = first.sources[source], b = last.sources[source];
          if (!a || !b || seconds <= 0 || !(counter in a.counters) || !(counter in b.counters)) return null;
          return Math.max(0, (b.counters[counter] - a.counters[counter]) / seconds);
        }

        function renderHeader(cluster) {
          text("cluster-name", cluster.cluster ? "cluster " + cluster.cluster : "");
          text("node-name", cluster.self.name);
          text("node-address", cluster.self.address);
          const state = cluster.leaving ? "leaving" : cluster.ready ? "ready" : "joining";
          const badge = document.getElementById("node-status");
          badge.className = "pill " + state; badge.textContent = state;
          text("view", "view of " + cluster.view.length + " · checksum " + cluster.checksum);
          text("updated", "updated " + new Date().toLocaleTimeString([], { hour12: false }));
        }

        function renderMembers(cluster, owned) {
          const members = [...cluster.members].sort((a, b) => a.name.localeCompare(b.name));
          const alive = members.filter(m => m.status === "alive").length;
          text("s-members", alive + " / " + members.length);
          replace("members", members.map(m => el("tr", { "data-member": m.name, "data-status": m.status },
            el("td", {}, m.name, m.name === cluster.self.name ? el("span", { class: "self" }, "this node") : null),
            el("td", {}, m.address),
            el("td", {}, pill(m.status)),
            el("td", { class: "num" }, m.incarnation),
            el("td", { class: "num" }, owned[m.name] || 0))));
        }

        function renderResources(cluster, placed, local) {
          const here = new Map(local.resources.map(r => [r.id, r]));
          const groups = new Map(cluster.view.map(name => [name, []]));
          for (const r of placed.resources) {
            const owner = r.owner || "unassigned";
            if (!groups.has(owner)) groups.set(owner, []);
            groups.get(owner).push(r);
          }
          // Local resources that placement no longer gives this node (terminating, or handing off) show here too.
          for (const r of local.resources) {
            if (!placed.resources.some(p => p.id === r.id && p.owner === local.node)) {
              if (!groups.has(local.node)) groups.set(local.node, []);
              groups.get(local.node).push({ id: r.id, owner: local.node });
            }
          }
          const owned = {};
          const nodes = [...groups.keys()].sort((a, b) => (a === "unassigned") - (b === "unassigned") || a.localeCompare(b));
          replace("resources", nodes.map(node => {
            const items = groups.get(node).sort((a, b) => a.id.localeCompare(b.id, undefined, { numeric: true }));
            owned[node] = items.length;
            return el("div", { class: "node-group", "data-node": node },
              el("h3", {}, el("span", {}, node, node === cluster.self.name ? el("span", { class: "self" }, "this node") : null),
                el("span", { class: "count" }, items.length + (items.length === 1 ? " resource" : " resources"))),
              items.length === 0 ? el("div", { class: "empty" }, "nothing placed here") :
              el("ul", {}, ...items.map(r => {
                const mine = here.get(r.id);
                const state = mine ? mine.state : (r.state || "placed");
                const c = mine && mine.connector;
                const shown = c ? c.state : state;
                const title = [r.id, "state " + state, mine ? "since " + mine.since : "state known on " + node]
                  .concat(c ? [c.kind + " " + c.state + ", in " + c.messagesIn + ", out " + c.messagesOut + ", failures " + c.failures,
                               c.lastError ? "last error: " + c.lastError : ""] : []).filter(Boolean).join("\n");
                return el("li", { class: "res " + shown, "data-resource": r.id, "data-state": state, title },
                  el("span", { class: "dot" }), r.id,
                  state !== "placed" ? el("span", { class: "conn" }, c ? c.kind + " " + c.state : state) : null);
              })));
          }));
          text("s-resources", placed.resources.length + " (" + local.resources.filter(r => r.state === "running").length + ")");
          return owned;
        }

        function renderMoves(moves) {
          const recent = moves.moves.slice(-50).reverse();
          if (recent.length === 0) {
            replace("moves", [el("li", { class: "empty" }, "no moves since this node started")]);
            return;
          }
          replace("moves", recent.map(m => el("li", { "data-resource": m.id, "data-from": m.from, "data-to": m.to },
            el("span", { class: "time" }, clock(m.at)),
            el("span", {}, m.id),
            el("span", {}, m.from, el("span", { class: "arrow" }, "→"), m.to),
            el("span", { class: "why" }, m.reason))));
        }

        function spark(id, values) {
          const max = Math.max(1, ...values);
          const points = values.map((v, i) => (SPARK - values.length + i) + "," + (25 - 24 * v / max).toFixed(1));
          document.querySelector("#" + id + " polyline").setAttribute("points", points.join(" "));
        }

        function renderStats(stats) {
          const byName = {};
          for (const s of stats.sources) byName[s.name] = s;
          samples.push({ time: stats.time, sources: byName });
          while (samples.length > WINDOW + 1) samples.shift();
          const nats = byName.nats;
          const show = v => v === null ? "–" : human(v);
          text("s-in", show(rate("nats", "inMsgs")));
          text("s-out", show(rate("nats", "outMsgs")));
          text("s-bytes", nats ? show(rate("nats", "inBytes")) + " / " + show(rate("nats", "outBytes")) : "off");
          text("s-connections", nats ? nats.gauges.connections : "off");
          if (samples.length >= 2) {
            for (const [key, counter] of [["in", "inMsgs"], ["out", "outMsgs"]]) {
              sparks[key].push(rate("nats", counter) || 0);
              if (sparks[key].length > SPARK) sparks[key].shift();
              spark("spark-" + key, sparks[key]);
            }
          }
          const rows = [];
          for (const s of stats.sources) {
            for (const name of Object.keys(s.counters).sort()) {
              const r = rate(s.name, name);
              rows.push(el("tr", {},
                el("td", {}, s.name + "." + name),
                el("td", { class: "num" }, human(s.counters[name])),
                el("td", { class: "num", "data-rate": s.name + "." + name, "data-value": r === null ? "" : r }, show(r))));
            }
            for (const name of Object.keys(s.gauges).sort()) {
              rows.push(el("tr", {}, el("td", {}, s.name + "." + name + " (now)"),
                el("td", { class: "num" }, human(s.gauges[name])), el("td", {})));
            }
          }
          replace("rates", rows);
        }

        async function refresh() {
          try {
            const [cluster, placed, local, moves, stats] = await Promise.all([
              get("/v1/cluster"), get("/v1/resources?scope=cluster"), get("/v1/resources"), get("/v1/moves"), get("/v1/stats")]);
            renderHeader(cluster);
            const owned = renderResources(cluster, placed, local);
            renderMembers(cluster, owned);
            renderMoves(moves);
            renderStats(stats);
            document.body.dataset.loaded = "true";
          } catch (error) {
            const badge = document.getElementById("node-status");
            badge.className = "pill offline"; badge.textContent = "unreachable";
            text("updated", String(error.message || error));
          }
        }
        async function loop() { await refresh(); setTimeout(loop, 1000); }
        loop();
        </script>
        </body>
        </html>
        """#
}
