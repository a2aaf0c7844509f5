// A shop's webhook receiver for the tests: verifies every message with the Standard Webhooks
// spec's own library (npm `standardwebhooks`), as a shop's would, and fails on purpose by plan.
//
//   node webhook-receiver.mjs PORT LOG PLAN
//
// WEBHOOK_SECRET holds the secret it verifies with. PLAN is a JSON file mapping a path to
// {"attempts": [...], "then": "..."}: the n-th request for one webhook-id on that path gets
// attempts[n], later ones "then" (default "ok"). Each is "ok" (204), a status ("500", "410",
// "400"), "429:S" (429 with Retry-After: S), "slow:MS" (204 after MS ms) or "timeout" (no
// answer, the socket held open).
// A path whose rule has "slack": true takes Slack messages instead: not signed; "verified"
// says whether it is one Slack takes (text, at most 50 blocks), and "items" lists its sections'
// block ids. Every request is appended to LOG as a JSON line {path, id, n, verified, answer,
// body, items}; the
// counts start from what LOG holds, so a restarted receiver carries on with the plan. Prints
// "listening" once it is.
import { appendFileSync, existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { Webhook } from "standardwebhooks";

const [port, log, planFile] = process.argv.slice(2);
const plan = JSON.parse(readFileSync(planFile, "utf8"));
const webhook = new Webhook(process.env.WEBHOOK_SECRET);
const seen = new Map();
if (existsSync(log)) {
  for (const line of readFileSync(log, "utf8").split("\n")) {
    if (!line) continue;
    const { path, id } = JSON.parse(line);
    const key = `${path} ${id}`;
    seen.set(key, (seen.get(key) ?? 0) + 1);
  }
}

const server = createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    const rule = plan[req.url] ?? {};
    let id = req.headers["webhook-id"] ?? "";
    let verified = true;
    let parsed = null;
    let items;
    try {
      if (rule.slack) {
        parsed = JSON.parse(body);
        const blocks = parsed.blocks ?? [];
        verified = typeof parsed.text === "string" && blocks.length <= 50;
        items = blocks.filter((b) => b.block_id).map((b) => b.block_id);
        id = items.join(",");
      } else {
        parsed = webhook.verify(body, req.headers);
      }
    } catch (e) {
      verified = false;
    }
    const key = `${req.url} ${id}`;
    const n = seen.get(key) ?? 0;
    seen.set(key, n + 1);
    let answer = (rule.attempts ?? [])[n] ?? rule.then ?? "ok";
    const delivered = answer === "ok" || answer.startsWith("slow:");
    if (!verified) answer = "400";
    appendFileSync(
      log,
      JSON.stringify({ path: req.url, id, n, verified, answer: delivered ? "ok" : answer, body: parsed, items }) + "\n",
    );
    if (answer === "timeout") return; // never answered; the sender gives up
    if (answer.startsWith("slow:")) {
      setTimeout(() => res.writeHead(204).end(), Number(answer.slice(5)));
    } else if (answer === "ok") {
      res.writeHead(204).end();
    } else if (answer.startsWith("429:")) {
      res.writeHead(429, { "retry-after": answer.slice(4) }).end("slow down");
    } else {
      res.writeHead(Number(answer)).end("planned failure");
    }
  });
});
server.listen(Number(port), "127.0.0.1", () => console.log("listening"));
