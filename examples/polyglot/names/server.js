// names: Node's built-in http module. `GET /names` → the list, `GET /pick?seed=N` → one of them.
// No health endpoint; reads its port from PORT and refuses to start without NAMES.
"use strict";
const http = require("node:http");

const names = (process.env.NAMES || "").split(",").filter(Boolean);
if (names.length === 0) {
  console.error("names: NAMES is not set");
  process.exit(1);
}

function send(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(data) });
  res.end(data);
}

http
  .createServer((req, res) => {
    const url = new URL(req.url, "http://localhost");
    if (url.pathname === "/names") return send(res, 200, { names });
    if (url.pathname === "/pick") {
      const seed = Number.parseInt(url.searchParams.get("seed") || "0", 10) || 0;
      return send(res, 200, { name: names[Math.abs(seed) % names.length] });
    }
    send(res, 404, { error: "not found" });
  })
  .listen(Number(process.env.PORT), "127.0.0.1", () => console.log(`names: listening on ${process.env.PORT}`));
