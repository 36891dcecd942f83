// MARK: - DemoPage
//
// The demo's web page: one HTML document with its style and script inline, nothing loaded from elsewhere. It polls
// `GET /api/state` twice a second and redraws; its buttons call `POST /api/nodes` and `POST /api/nodes/…/kill`.
// Elements the browser test looks for carry ids and data attributes: `#nodes .node[data-node][data-status]`,
// `#players tr[data-player]` with `td.owner`, `#add-node`, `#kill-node`, `#counts [data-count]`, `#feed li`.

enum DemoPage {
    static let html = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>Stork live demo</title>
        <style>
          :root { --bg: #f5f6f8; --card: #fff; --ink: #1d2430; --muted: #6b7480; --line: #dde1e6;
                  --live: #1f9d55; --dead: #c53030; --start: #b7791f; --home: #2b6cb0; --away: #9b2c2c; }
          * { box-sizing: border-box; }
          body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg); color: var(--ink); }
          header { display: flex; align-items: center; gap: 24px; padding: 14px 24px; background: #182030; color: #fff; }
          header h1 { font-size: 18px; margin: 0; font-weight: 600; }
          #scoreboard { font-size: 18px; font-variant-numeric: tabular-nums; }
          #scoreboard .score { font-weight: 700; padding: 0 8px; }
          #scoreboard .minute { color: #cbd5e0; margin-left: 12px; font-size: 14px; }
          header .buttons { margin-left: auto; display: flex; gap: 8px; }
          button { font: inherit; border: 0; border-radius: 6px; padding: 7px 14px; cursor: pointer; background: #e2e8f0; color: var(--ink); }
          button.primary { background: #3182ce; color: #fff; }
          button.danger { background: var(--dead); color: #fff; }
          button:disabled { opacity: .5; cursor: default; }
          main { display: grid; grid-template-columns: 1.35fr 1fr; gap: 16px; padding: 16px 24px; }
          section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
          section h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); margin: 0 0 10px; }
          #nodes { display: flex; flex-wrap: wrap; gap: 10px; }
          .node { border: 2px solid var(--line); border-radius: 8px; padding: 8px 10px; min-width: 150px; flex: 1; }
          .node[data-status="live"] { border-color: var(--live); }
          .node[data-status="starting"] { border-color: var(--start); }
          .node[data-status="killed"], .node[data-status="exited"], .node[data-status="stopped"] { border-color: var(--dead); background: #fff5f5; opacity: .8; }
          .node .title { display: flex; align-items: center; gap: 8px; font-weight: 600; font-size: 15px; }
          .node .status { font-size: 12px; font-weight: 600; text-transform: uppercase; }
          .node[data-status="live"] .status { color: var(--live); }
          .node[data-status="starting"] .status { color: var(--start); }
          .node[data-status="killed"] .status, .node[data-status="exited"] .status { color: var(--dead); }
          .node .kill { margin-left: auto; padding: 2px 8px; font-size: 12px; }
          .node .meta { color: var(--muted); font-size: 12px; }
          .chips { display: flex; flex-wrap: wrap; gap: 3px; margin-top: 6px; }
          .chip { font-size: 11px; padding: 1px 6px; border-radius: 10px; background: #edf2f7; }
          .chip.home { background: #ebf4ff; color: var(--home); }
          .chip.away { background: #fff5f5; color: var(--away); }
          .chip.moved { outline: 2px solid #f6ad55; }
          table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
          th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid var(--line); font-size: 13px; }
          th { color: var(--muted); font-weight: 500; }
          td.owner { font-weight: 600; }
          td.owner.none { color: var(--dead); }
          tr.flash td { background: #fefcbf; }
          .home-team { color: var(--home); } .away-team { color: var(--away); }
          #counts { display: grid; grid-template-columns: repeat(4, 1fr); gap: 8px; }
          #counts div { background: #f7fafc; border-radius: 6px; padding: 6px 8px; }
          #counts b { display: block; font-size: 20px; font-variant-numeric: tabular-nums; }
          #counts span { color: var(--muted); font-size: 12px; }
          #counts .good b { color: var(--live); } #counts .bad b { color: var(--dead); }
          ul { list-style: none; margin: 0; padding: 0; max-height: 260px; overflow: auto; }
          li { padding: 3px 0; border-bottom: 1px solid var(--line); font-size: 13px; }
          li .t { color: var(--muted); font-variant-numeric: tabular-nums; margin-right: 6px; }
          li.goal { font-weight: 700; }
          .via { color: var(--muted); }
          #story li { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
          .stack { display: flex; flex-direction: column; gap: 16px; }
          #error { color: var(--dead); }
        </style>
        </head>
        <body>
        <header>
          <h1>Stork live demo</h1>
          <div id="scoreboard"><span id="home" class="team">…</span><span class="score" id="score">0-0</span><span id="away" class="team">…</span><span class="minute" id="minute"></span></div>
          <span id="error"></span>
          <div class="buttons">
            <button id="add-node" class="primary">add node</button>
            <button id="kill-node" class="danger">kill node</button>
          </div>
        </header>
        <main>
          <div class="stack">
            <section><h2>Nodes</h2><div id="nodes"></div></section>
            <section><h2>Players</h2>
              <table id="players"><thead><tr><th>player</th><th>team</th><th>owner</th><th>shots</th><th>feed connections</th></tr></thead><tbody></tbody></table>
            </section>
          </div>
          <div class="stack">
            <section><h2>Shots</h2><div id="counts"></div></section>
            <section><h2>Feed (as received over NATS)</h2><ul id="feed"></ul></section>
            <section><h2>Moves</h2><ul id="moves"></ul></section>
            <section><h2>Story</h2><ul id="story"></ul></section>
          </div>
        </main>
        <script>
        "use strict";
        const $ = (id) => document.getElementById(id);
        function el(tag, attrs, ...children) {
          const node = document.createElement(tag);
          for (const [key, value] of Object.entries(attrs || {})) {
            if (key === "class") node.className = value;
            else if (key.startsWith("data-")) node.setAttribute(key, value);
            else node[key] = value;
          }
          for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
          return node;
        }
        const seconds = (t) => t.toFixed(1).padStart(6, " ") + "s";
        let state = null;
        let lastOwners = {};
        let flashUntil = {};

        async function post(path) {
          try {
            const response = await fetch(path, { method: "POST" });
            const body = await response.json();
            $("error").textContent = response.ok ? "" : (body.error || response.statusText);
          } catch (error) {
            $("error").textContent = String(error);
          }
          refresh();
        }
        $("add-node").onclick = () => post("/api/nodes");
        $("kill-node").onclick = () => post("/api/nodes/kill");

        function render(s) {
          const homeTeam = s.match.home;
          $("home").textContent = s.match.home;
          $("away").textContent = s.match.away;
          $("score").textContent = s.match.score;
          $("minute").textContent = s.match.phase === "playing" ? s.match.minute + "'" : s.match.phase;
          const live = s.nodes.filter((n) => n.status === "live" || n.status === "starting");
          $("kill-node").disabled = live.length <= 1;

          const now = s.elapsed;
          for (const p of s.players) {
            if (lastOwners[p.id] !== undefined && p.owner && lastOwners[p.id] !== p.owner) flashUntil[p.id] = now + 4;
            if (p.owner) lastOwners[p.id] = p.owner;
          }

          const nodes = $("nodes");
          nodes.replaceChildren(...s.nodes.map((n) => {
            const kill = el("button", { class: "kill danger", textContent: "kill" });
            kill.onclick = () => post("/api/nodes/" + n.name + "/kill");
            kill.disabled = !(n.status === "live" || n.status === "starting") || live.length <= 1;
            const players = s.players.filter((p) => p.owner === n.name);
            return el("div", { class: "node", "data-node": n.name, "data-status": n.status },
              el("div", { class: "title" }, n.name, el("span", { class: "status" }, n.status), kill),
              el("div", { class: "meta" }, n.players + " players · " + n.shots + " shots · NATS " + n.nats + (n.subscribed ? " ✓" : "")),
              el("div", { class: "chips" }, ...players.map((p) =>
                el("span", { class: "chip " + (p.team === homeTeam ? "home" : "away") + ((flashUntil[p.id] || 0) > now ? " moved" : "") }, p.id))));
          }));

          const body = $("players").tBodies[0];
          body.replaceChildren(...s.players.map((p) =>
            el("tr", { "data-player": p.id, "data-owner": p.owner || "", class: (flashUntil[p.id] || 0) > now ? "flash" : "" },
              el("td", {}, p.id + " " + p.name + " #" + p.number),
              el("td", { class: p.team === homeTeam ? "home-team" : "away-team" }, p.team),
              el("td", { class: "owner" + (p.owner ? "" : " none") }, p.owner || "—"),
              el("td", {}, p.shots),
              el("td", {}, p.connections))));

          const c = s.counts;
          const count = (key, label, value, cls) => el("div", { "data-count": key, class: cls || "" }, el("b", {}, value), el("span", {}, label));
          $("counts").replaceChildren(
            count("scripted", "scripted", c.scripted),
            count("sent", "sent by the feed", c.sent),
            count("received", "received (unique)", c.received),
            count("duplicates", "duplicates suppressed", c.duplicates),
            count("writes", "WebSocket writes", c.writes),
            count("repeats", "repeats", c.repeats),
            count("unconfirmed", "unconfirmed", c.unconfirmed),
            count("lost", "lost", c.lost === null || c.lost === undefined ? "—" : c.lost, c.lost === 0 ? "good" : (c.lost ? "bad" : "")));

          $("feed").replaceChildren(...s.feed.map((a) =>
            el("li", { class: a.outcome === "goal" ? "goal" : "" },
              el("span", { class: "t" }, a.minute + "'"),
              a.shot + " " + a.name + " (" + a.team + ") " + (a.outcome === "goal" ? "GOAL " + a.score : a.outcome) + " ",
              el("span", { class: "via" }, "via " + a.node))));
          $("moves").replaceChildren(...s.moves.map((m) =>
            el("li", {}, el("span", { class: "t" }, seconds(m.at)), m.player + ": " + m.from + " → " + m.to)));
          $("story").replaceChildren(...s.story.map((l) =>
            el("li", {}, el("span", { class: "t" }, seconds(l.at)), l.text)));
        }

        async function refresh() {
          try {
            const response = await fetch("/api/state", { cache: "no-store" });
            state = await response.json();
            render(state);
            document.body.dataset.loaded = "true";
          } catch (error) {
            $("error").textContent = "the demo is not answering";
          }
        }
        refresh();
        setInterval(refresh, 500);
        </script>
        </body>
        </html>
        """#
}
