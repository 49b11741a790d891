// A CGI-style wcluster handler in AssemblyScript, with @assemblyscript/wasi-shim
// providing `process` (environment, stdin, stdout) over WASI.
//
//   npx asc handler.ts --config node_modules/@assemblyscript/wasi-shim/asconfig.json -O3 -o handler.wasm

function env(name: string): string {
  return process.env.has(name) ? process.env.get(name) : "";
}

function readBody(): string {
  const chunk = new ArrayBuffer(4096);
  let body = "";
  while (true) {
    const n = process.stdin.read(chunk);
    if (n <= 0) break;
    body += String.UTF8.decode(chunk.slice(0, n));
  }
  return body;
}

const method = env("REQUEST_METHOD");
const path = env("PATH_INFO");

if (path == "/missing") {
  process.stdout.write("Status: 404 Not Found\nContent-Type: text/plain\n\nno such page\n");
} else {
  let out = "Content-Type: text/plain\n\nHello from AssemblyScript! " + method + " " + path;
  const query = env("QUERY_STRING");
  if (query.length > 0) out += "?" + query;
  out += "\n";
  if (method == "POST") out += "body: " + readBody() + "\n";
  process.stdout.write(out);
}
