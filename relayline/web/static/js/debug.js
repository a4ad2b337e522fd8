// Debug overlay (Ctrl+Shift+D): the last packets in and out of the socket, newest first.
// Recording is a ring buffer that costs the same whether the overlay is open or not; the
// table is only drawn while it is visible, at most once per animation frame.

export class RingBuffer {
  constructor(capacity) {
    if (!(capacity > 0)) throw new RangeError("capacity must be positive");
    this.capacity = capacity;
    this.items = new Array(capacity);
    this.start = 0;
    this.length = 0;
    this.total = 0;
  }

  push(item) {
    const end = (this.start + this.length) % this.capacity;
    this.items[end] = item;
    if (this.length < this.capacity) this.length += 1;
    else this.start = (this.start + 1) % this.capacity;
    this.total += 1;
  }

  /** Oldest first. */
  toArray() {
    const out = [];
    for (let i = 0; i < this.length; i += 1) out.push(this.items[(this.start + i) % this.capacity]);
    return out;
  }
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.append(td);
}

export class DebugOverlay {
  constructor({ capacity = 200, getState = () => ({}) } = {}) {
    this.packets = new RingBuffer(capacity);
    this.getState = getState;
    this.root = null;
    this.frame = 0;
    this.counts = { in: 0, out: 0, bytesIn: 0, bytesOut: 0 };
    document.addEventListener("keydown", (ev) => {
      if (ev.ctrlKey && ev.shiftKey && (ev.key === "D" || ev.key === "d")) {
        ev.preventDefault();
        this.toggle();
      } else if (ev.key === "Escape" && this.visible) {
        this.toggle(false);
      }
    });
  }

  get visible() {
    return this.root !== null && !this.root.hidden;
  }

  record(packet) {
    this.packets.push(packet);
    if (packet.dir === "in") {
      this.counts.in += 1;
      this.counts.bytesIn += packet.size;
    } else {
      this.counts.out += 1;
      this.counts.bytesOut += packet.size;
    }
    if (this.visible) this.schedule();
  }

  schedule() {
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        this.draw();
      });
    }
  }

  build() {
    const root = document.createElement("section");
    root.className = "debug";
    root.id = "debug-overlay";
    root.setAttribute("role", "dialog");
    root.setAttribute("aria-label", "Debug: socket packets");
    root.hidden = true;
    const head = document.createElement("header");
    head.className = "debug__head";
    const title = document.createElement("strong");
    title.textContent = "Packets";
    this.summary = document.createElement("span");
    this.summary.className = "debug__summary";
    const close = document.createElement("button");
    close.type = "button";
    close.className = "btn btn--ghost btn--small";
    close.textContent = "Close";
    close.addEventListener("click", () => this.toggle(false));
    head.append(title, this.summary, close);
    const scroller = document.createElement("div");
    scroller.className = "debug__scroll";
    const table = document.createElement("table");
    table.className = "debug__table";
    const thead = document.createElement("thead");
    const hr = document.createElement("tr");
    for (const name of ["time", "", "topic", "type", "seq", "bytes"]) {
      const th = document.createElement("th");
      th.textContent = name;
      th.scope = "col";
      hr.append(th);
    }
    thead.append(hr);
    this.body = document.createElement("tbody");
    table.append(thead, this.body);
    scroller.append(table);
    root.append(head, scroller);
    document.body.append(root);
    this.root = root;
  }

  toggle(force) {
    if (!this.root) this.build();
    const show = force ?? this.root.hidden;
    this.root.hidden = !show;
    if (show) this.draw();
  }

  draw() {
    if (!this.visible) return;
    const state = this.getState();
    const c = this.counts;
    this.summary.textContent =
      `${state.connection ?? ""} · in ${c.in} (${(c.bytesIn / 1024).toFixed(1)} KiB)` +
      ` · out ${c.out} (${(c.bytesOut / 1024).toFixed(1)} KiB) · showing ${this.packets.length}`;
    const rows = [];
    for (const p of this.packets.toArray().reverse()) {
      const tr = document.createElement("tr");
      tr.className = `debug__row debug__row--${p.dir}`;
      cell(tr, new Date(p.at).toISOString().slice(11, 23));
      cell(tr, p.dir === "in" ? "↓" : "↑", "debug__dir");
      cell(tr, p.topic || "—");
      cell(tr, p.type + (p.ref ? ` #${p.ref}` : ""));
      cell(tr, p.seq == null ? "" : String(p.seq), "num");
      cell(tr, String(p.size), "num");
      rows.push(tr);
    }
    this.body.replaceChildren(...rows);
  }
}
