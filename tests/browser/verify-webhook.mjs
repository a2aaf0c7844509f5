// Verifies Standard Webhooks messages with the spec's own library (npm `standardwebhooks`), as a
// shop's receiver would: reads a JSON array of {secret, headers, body} from the file given,
// prints one line per message, "ok" or the library's error. Run by tests/webhook_signatures.rs.
import { readFileSync } from "node:fs";
import { Webhook } from "standardwebhooks";

const messages = JSON.parse(readFileSync(process.argv[2], "utf8"));
for (const { secret, headers, body } of messages) {
  try {
    new Webhook(secret).verify(body, headers);
    console.log("ok");
  } catch (e) {
    console.log(`refused: ${e.message}`);
  }
}
