// The example's own little server: the page (index.html, dist/app.js) and, for everything else, a reverse
// proxy to the agentrt API (AGENTRT_URL), so the page and `/api/chat` share one origin, as a Next.js app's
// rewrites would arrange. The Host header is passed through: the API's dev sign-in answers only this machine.
//
//   AGENTRT_URL=http://127.0.0.1:8000 PORT=3000 node serve.mjs
import http from "node:http";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";

const api = new URL(process.env.AGENTRT_URL || "http://127.0.0.1:8000");
const port = Number(process.env.PORT || 3000);
const page = { "/": ["index.html", "text/html"], "/app.js": ["dist/app.js", "text/javascript"] };

const server = http.createServer(async (request, response) => {
  const file = request.method === "GET" && page[new URL(request.url, "http://page").pathname];
  if (file) {
    const body = await readFile(fileURLToPath(new URL(file[0], import.meta.url)));
    response.writeHead(200, { "content-type": file[1], "cache-control": "no-store" });
    response.end(body);
    return;
  }
  const upstream = http.request(
    { host: api.hostname, port: api.port, path: request.url, method: request.method, headers: request.headers },
    (answer) => {
      response.writeHead(answer.statusCode, answer.headers);
      answer.pipe(response); // server-sent events stream through as they come
    },
  );
  upstream.on("error", (error) => {
    response.writeHead(502, { "content-type": "application/json" });
    response.end(JSON.stringify({ error: "bad_gateway", detail: String(error) }));
  });
  response.on("close", () => upstream.destroy());
  request.pipe(upstream);
});
server.listen(port, "127.0.0.1", () => console.log(`AI SDK chat on http://127.0.0.1:${port}/ (API ${api.origin})`));
