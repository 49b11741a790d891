// Node.js cluster + Express "hello world" (and echo on POST): the setup
// wcluster's users come from. One worker per available core.
const cluster = require("node:cluster");
const os = require("node:os");

const port = Number(process.argv[2] || 8082);

if (cluster.isPrimary) {
  const workers = os.availableParallelism();
  for (let i = 0; i < workers; i++) cluster.fork();
  console.log(`listening on http://127.0.0.1:${port} (${workers} workers)`);
} else {
  const express = require("express");
  const app = express();
  app.get("/", (req, res) => res.type("text/plain").send("Hello, world!\n"));
  app.post("/", express.raw({ type: "*/*", limit: "16mb" }), (req, res) => res.send(req.body));
  app.listen(port, "127.0.0.1");
}
