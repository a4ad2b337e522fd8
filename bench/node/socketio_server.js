// Node socket.io peer for bench/fanout.py: the same job as relayline's fan-out, done the
// idiomatic socket.io way. Clients authenticate with a token in the connect packet, join a
// room with a "subscribe" event (acked with the room's current seq), and receive every event
// published to the room as an envelope like relayline's ({v, id, topic, type, seq, ts, data}).
// POST /publish {topic, events: [{type, data}]} with "Authorization: Bearer <token>" emits each
// event to the room, in order, and answers 202 {seqs}.
//
// usage: node socketio_server.js --port 8101 --token SECRET
"use strict";

const http = require("http");
const crypto = require("crypto");
const { Server } = require("socket.io");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

const port = Number(arg("port", "8101"));
const token = arg("token", "bench-token");
const maxBody = 4 * 1024 * 1024;
const seqs = new Map();

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "Content-Type": "application/json",
    "Content-Length": Buffer.byteLength(text),
  });
  res.end(text);
}

function publish(req, res) {
  if (req.headers.authorization !== `Bearer ${token}`) {
    reply(res, 401, { error: "unauthorized" });
    return;
  }
  const chunks = [];
  let size = 0;
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size > maxBody) {
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch (err) {
      reply(res, 400, { error: "invalid JSON" });
      return;
    }
    const topic = body.topic;
    const events = Array.isArray(body.events) ? body.events.slice(0, 1000) : [];
    let seq = seqs.get(topic) || 0;
    const out = [];
    const room = io.to(topic);
    for (const event of events) {
      seq += 1;
      out.push(seq);
      room.emit("event", {
        v: 1,
        id: crypto.randomUUID(),
        topic,
        type: event.type,
        seq,
        ts: Date.now(),
        data: event.data,
      });
    }
    seqs.set(topic, seq);
    reply(res, 202, { seqs: out });
  });
}

const server = http.createServer((req, res) => {
  if (req.method === "POST" && req.url === "/publish") {
    publish(req, res);
  } else if (req.method === "GET" && req.url === "/health") {
    reply(res, 200, { status: "ok" });
  } else {
    reply(res, 404, { error: "not found" });
  }
});

const io = new Server(server, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  maxHttpBufferSize: 64 * 1024,
});

io.use((socket, next) => {
  const auth = socket.handshake.auth || {};
  if (auth.token === token) {
    next();
  } else {
    next(new Error("unauthorized"));
  }
});

io.on("connection", (socket) => {
  socket.on("subscribe", (topic, ack) => {
    if (typeof topic !== "string" || typeof ack !== "function") {
      return;
    }
    socket.join(topic);
    ack({ topic, seq: seqs.get(topic) || 0 });
  });
});

server.listen(port, "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${port}`);
});

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    io.close();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
