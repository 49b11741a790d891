// A wasi:http handler in JavaScript: the web's fetch-event API, built into a
// component by componentize-js (SpiderMonkey inside).
addEventListener("fetch", (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const url = new URL(request.url);
  const headers = { "content-type": "text/plain" };
  if (request.method === "POST") {
    const body = await request.text();
    return new Response(`Hello from JavaScript! POST ${url.pathname} body=${body}\n`, { headers });
  }
  if (url.pathname === "/missing") {
    return new Response("no such page\n", { status: 404, headers });
  }
  return new Response(`Hello from JavaScript! ${request.method} ${url.pathname}${url.search}\n`, { headers });
}
