// Copies uPlot's built files (the version package-lock.json pins) to the gateway's static folder,
// where the /console page loads them; tests/test_console_assets.py checks the copies are identical.
import { copyFileSync } from "node:fs";

const to = "../ooblex/gateway/static/vendor/";
for (const [from, name] of [["dist/uPlot.iife.min.js", "uPlot.iife.min.js"], ["dist/uPlot.min.css", "uPlot.min.css"],
  ["LICENSE", "uPlot.LICENSE"]]) {
  copyFileSync(`node_modules/uplot/${from}`, to + name);
}
