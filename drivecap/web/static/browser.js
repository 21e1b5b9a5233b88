// drivecap drive browser: list drives, play one with its WebVTT track, captions with click-to-seek.
"use strict";
(function () {
  const player = document.getElementById("player");
  const list = document.getElementById("captions");
  const vmsg = document.getElementById("vmsg");
  const capEl = document.getElementById("caption");
  const state = { drive: null, captions: [], drives: [] };
  window.drivecapBrowser = state;   // read by the tests

  const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text != null) e.textContent = text; return e; };
  const getJSON = async (url) => { const r = await fetch(url, { credentials: "same-origin" }); if (!r.ok) throw new Error(url + ": " + r.status); return r.json(); };

  function captionItem(c, onClick) {
    const li = el("li", c.urgent ? "urgent" : "");
    li.dataset.t = c.t;
    if (c.thumb) { const img = el("img"); img.loading = "lazy"; img.alt = ""; img.src = c.thumb; li.append(img); }
    li.append(el("span", "t", c.t.toFixed(1) + " s"), el("span", "text", c.text));
    li.addEventListener("click", onClick);
    return li;
  }

  async function openDrive(d, seekTo) {
    state.drive = d.id;
    document.querySelectorAll(".drives button").forEach((b) => b.classList.toggle("sel", b.dataset.id === d.id));
    vmsg.textContent = d.codec && d.codec !== "h264"
      ? "This recording's video is " + d.codec + ", which browsers do not play; record with the H.264 recorder."
      : "";
    player.replaceChildren();
    player.src = d.video;
    const track = el("track"); track.kind = "captions"; track.label = "captions"; track.srclang = "en";
    track.src = d.vtt;
    player.append(track);
    // The caption is burned into the video already: the track is loaded for the text under the player
    // (and for the player's own CC button), not drawn over the picture a second time.
    player.textTracks[0].mode = "hidden";
    const body = await getJSON("/api/captions?drive=" + encodeURIComponent(d.id));
    state.captions = body.captions;
    document.getElementById("list-title").textContent = body.captions.length + " captions in " + d.name;
    list.replaceChildren(...body.captions.map((c) => captionItem(c, () => { player.currentTime = c.t; player.play(); })));
    if (seekTo != null) player.addEventListener("loadedmetadata", () => { player.currentTime = seekTo; }, { once: true });
  }

  player.addEventListener("error", () => {
    const e = player.error;
    vmsg.textContent = "The browser cannot play this video (error " + (e ? e.code : "?") + ")" + (e && e.code === 4 ? ": its codec is not supported (mp4v?)." : ".");
    vmsg.classList.add("error");
  });
  player.addEventListener("timeupdate", () => {
    // Mark the caption on screen now in the list (the last one at or before the playhead).
    let cur = -1;
    state.captions.forEach((c, k) => { if (c.t <= player.currentTime + 0.05) cur = k; });
    [...list.children].forEach((li, k) => li.classList.toggle("current", k === cur));
    const tr = player.textTracks[0];
    const cue = tr && tr.activeCues && tr.activeCues[0];
    capEl.textContent = cue ? cue.text : "";
  });

  async function search(ev) {
    if (ev) ev.preventDefault();
    const q = document.getElementById("q").value;
    const urgent = document.getElementById("q-urgent").checked ? "&urgent=1" : "";
    const body = await getJSON("/api/search?q=" + encodeURIComponent(q) + urgent);
    document.getElementById("list-title").textContent = body.results.length + " results for “" + q + "”";
    list.replaceChildren(...body.results.map((r) => captionItem(r, () => {
      const d = state.drives.find((x) => x.id === r.drive);
      if (d) openDrive(d, r.t).then(() => player.play());
    })));
  }

  async function init() {
    const body = await getJSON("/api/drives");
    state.drives = body.drives;
    document.getElementById("count").textContent = body.drives.length + " drives";
    const box = document.getElementById("drives");
    box.replaceChildren(...body.drives.map((d) => {
      const b = el("button", "", d.id + " (" + d.captions + (d.urgent ? ", " + d.urgent + " urgent" : "") + ")");
      b.dataset.id = d.id;
      b.addEventListener("click", () => openDrive(d));
      return b;
    }));
    if (body.search) {
      const f = document.getElementById("search");
      f.hidden = false;
      f.addEventListener("submit", search);
    }
    const want = new URLSearchParams(location.search).get("drive");
    const first = body.drives.find((d) => d.id === want) || body.drives[0];
    if (first) await openDrive(first);
    else vmsg.textContent = "No drives here yet: record one with `drivecap replay FILE --out DIR`.";
    state.ready = true;
  }
  init().catch((e) => { vmsg.textContent = String(e); vmsg.classList.add("error"); });
})();
