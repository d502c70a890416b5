// Segment's Node library (@segment/analytics-node) sending to cxstream's collector, as a server would.
// Usage: node node_client.mjs <collector base URL> <write key> <run id>; exits 0 once everything was delivered.
import {Analytics} from "@segment/analytics-node";

const [host, writeKey, run] = process.argv.slice(2);
const analytics = new Analytics({writeKey, host, maxEventsInBatch: 5, flushInterval: 200});
const failed = [];
analytics.on("error", (err) => failed.push(String(err.reason ?? err.code ?? err)));
const userId = "node-user-" + run;
analytics.identify({userId, traits: {email: "node-" + run + "@example.org"}});
for (let i = 0; i < 7; i++) {
  analytics.track({userId, event: "Product Viewed", properties: {product_id: "P" + i}, messageId: run + "-" + i});
}
analytics.page({userId, name: "Checkout"});
await analytics.closeAndFlush({timeout: 20000});
if (failed.length) {
  console.error("not delivered:", failed.join("; "));
  process.exit(1);
}
