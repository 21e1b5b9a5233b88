// drivecap live page: frames painted on a canvas from /stream.mjpg (or the WebSocket), events over the
// WebSocket; latency measured here. A WebSocket frame message = 2-byte header length + JSON header
// {i, capture, output, encoded (Unix s)} + JPEG; an MJPEG part carries the same in X- headers.
// The clock offset to the server comes from ping/pong (NTP-style midpoint), so the figures hold on a
// phone too; on the same machine the offset is ~0.
"use strict";
(function () {
  const canvas = document.getElementById("video");
  const ctx = canvas.getContext("2d");
  const capEl = document.getElementById("caption");
  const timeline = document.getElementById("timeline");
  const conn = document.getElementById("conn");
  const speakBox = document.getElementById("speak");
  const hud = (id, text) => { document.getElementById(id).textContent = text; };
  const stats = { frames: [], captions: [], offsets: [], painted: 0, lastIndex: -1, lastCaption: null,
                  decodeErrors: 0 };
  window.drivecapStats = stats;   // read by `drivecap bench --web` and the tests
  let offsetMs = 0;               // server clock - page clock
  let busy = false, pending = null, ws = null, paintTimes = [];
  const nowMs = () => performance.timeOrigin + performance.now();

  speakBox.checked = localStorage.getItem("drivecap.speak") === "1";
  speakBox.addEventListener("change", () => {
    localStorage.setItem("drivecap.speak", speakBox.checked ? "1" : "0");
    if (speakBox.checked && "speechSynthesis" in window) speechSynthesis.speak(new SpeechSynthesisUtterance("speech on"));
  });

  function speak(text, urgent) {
    if (!speakBox.checked || !("speechSynthesis" in window)) return;
    if (urgent) speechSynthesis.cancel();            // an urgent caption goes first, like the car's own speech
    else if (speechSynthesis.speaking) return;       // newest wins: never queue a backlog of old scenes
    const u = new SpeechSynthesisUtterance(text);
    u.rate = 1.1;
    speechSynthesis.speak(u);
  }

  function addTimeline(ev) {
    const li = document.createElement("li");
    if (ev.urgent) li.classList.add("urgent");
    const t = document.createElement("span"); t.className = "t";
    t.textContent = (ev.t_shown ?? ev.t ?? 0).toFixed(1) + " s";
    const tx = document.createElement("span"); tx.className = "text"; tx.textContent = ev.text;
    li.append(t, tx);
    timeline.prepend(li);
    while (timeline.children.length > 30) timeline.lastChild.remove();
  }

  function showCaption(ev, live) {
    capEl.textContent = ev.text;          // textContent: caption text is never parsed as HTML
    capEl.classList.toggle("urgent", !!ev.urgent);
    addTimeline(ev);
    stats.lastCaption = ev.text;
    if (!live) return;
    speak(ev.text, ev.urgent);
    // Painted = the next animation frame after the DOM change (what the screen shows).
    requestAnimationFrame(() => {
      const painted = nowMs() + offsetMs;
      if (ev.shown_unix) stats.captions.push({ id: ev.id, ms: painted - ev.shown_unix * 1000 });
    });
  }

  function onEvent(ev) {
    if (ev.event === "pong") {
      const t1 = nowMs(), rtt = t1 - ev.ping;
      stats.offsets.push({ rtt, offset: ev.server_unix * 1000 - (ev.ping + rtt / 2) });
      const best = stats.offsets.reduce((a, b) => (b.rtt < a.rtt ? b : a));
      offsetMs = best.offset;
      return;
    }
    if (ev.event === "hello") {
      (ev.captions || []).forEach((c) => showCaption(c, false));
      if (ev.gate) hud("hud-gate", "gate " + (ev.gate.state || "-"));
      return;
    }
    if (ev.event === "caption") showCaption(ev, true);
    else if (ev.event === "gate") hud("hud-gate", "gate " + ev.state + (ev.semantic != null ? " d=" + ev.semantic.toFixed(3) : ""));
    else if (ev.event === "end") conn.textContent = "source ended";
  }

  async function paint(head, blob) {
    busy = true;
    try {
      const bmp = await createImageBitmap(blob);
      if (canvas.width !== bmp.width) { canvas.width = bmp.width; canvas.height = bmp.height; }
      ctx.drawImage(bmp, 0, 0);
      bmp.close();
      await new Promise((r) => requestAnimationFrame(r));
      const painted = nowMs() + offsetMs;
      stats.frames.push({ i: head.i, glass: painted - head.capture * 1000, output: painted - head.output * 1000 });
      if (stats.frames.length > 20000) stats.frames.splice(0, 10000);
      stats.painted++; stats.lastIndex = head.i;
      paintTimes.push(painted); if (paintTimes.length > 30) paintTimes.shift();
      hud("hud-frame", "frame " + head.i);
      if (paintTimes.length > 1) hud("hud-fps", ((paintTimes.length - 1) * 1000 / (paintTimes.at(-1) - paintTimes[0])).toFixed(1) + " fps");
      hud("hud-lat", "glass→page " + Math.round(painted - head.capture * 1000) + " ms");
    } catch (e) { stats.decodeErrors++; }
    busy = false;
    if (pending) { const p = pending; pending = null; paint(p.head, p.blob); }
  }

  function onFrame(buf) {
    const view = new DataView(buf);
    const n = view.getUint16(0);
    const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 2, n)));
    onFrameParts(head, new Blob([new Uint8Array(buf, 2 + n)], { type: "image/jpeg" }));
  }

  // Video from /stream.mjpg read with fetch(), parts split by their Content-Length, frame index and capture
  // time from each part's headers; events over a video-less WebSocket. `drivecap bench --web` measured
  // this painting sooner than JPEG frames over the WebSocket (docs/web.md); ?transport=ws keeps that path.
  async function readMjpeg() {
    const resp = await fetch("/stream.mjpg", { credentials: "same-origin", cache: "no-store" });
    const reader = resp.body.getReader();
    let buf = new Uint8Array(0);
    const dec = new TextDecoder();
    const append = (a, b) => { const c = new Uint8Array(a.length + b.length); c.set(a); c.set(b, a.length); return c; };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf = append(buf, value);
      for (;;) {
        let end = -1;
        for (let k = 0; k + 3 < buf.length; k++) if (buf[k] === 13 && buf[k + 1] === 10 && buf[k + 2] === 13 && buf[k + 3] === 10) { end = k; break; }
        if (end < 0) break;
        const head = dec.decode(buf.subarray(0, end));
        const len = +(/Content-Length: (\d+)/i.exec(head) || [])[1];
        if (!(len >= 0) || buf.length < end + 4 + len) break;
        const jpeg = buf.slice(end + 4, end + 4 + len);
        buf = buf.slice(end + 4 + len + 2);
        onFrameParts({ i: +(/X-Frame-Index: (\d+)/i.exec(head) || [])[1],
                       capture: +(/X-Capture-Unix: ([\d.]+)/i.exec(head) || [])[1],
                       output: +(/X-Output-Unix: ([\d.]+)/i.exec(head) || [])[1] },
                     new Blob([jpeg], { type: "image/jpeg" }));
      }
    }
  }

  function onFrameParts(head, blob) {
    if (busy) { stats.pageDrops = (stats.pageDrops || 0) + (pending ? 1 : 0); hud("hud-drops", "drops " + stats.pageDrops); pending = { head, blob }; }
    else paint(head, blob);
  }

  const transport = new URLSearchParams(location.search).get("transport") === "ws" ? "ws" : "mjpeg";
  stats.transport = transport;
  function startMjpeg() {
    readMjpeg().catch(() => {}).finally(() => setTimeout(startMjpeg, 1000));  // the server went: retry
  }
  if (transport === "mjpeg") startMjpeg();

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(proto + "//" + location.host + "/ws" + (transport === "mjpeg" ? "?video=0" : ""));
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      conn.textContent = "live"; conn.classList.add("ok");
      for (let k = 0; k < 5; k++) setTimeout(() => ws.readyState === 1 && ws.send(JSON.stringify({ ping: nowMs() })), k * 200);
    };
    ws.onmessage = (m) => (typeof m.data === "string" ? onEvent(JSON.parse(m.data)) : onFrame(m.data));
    ws.onclose = () => { conn.textContent = "reconnecting…"; conn.classList.remove("ok"); setTimeout(connect, 1000); };
  }
  connect();
})();
