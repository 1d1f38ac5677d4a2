// Screenshots of what Home Assistant shows, for docs/home-assistant-companion.md (headless Chromium via
// playwright-core; run by test_satellite.py when EDGEVERIFY_HA_SCREENSHOTS is set, see its docstring).
//
//   node screenshots.mjs <ha url> <access token> <out dir> <device id> <person> [<pipeline id> [<companion device id>]]
//
// Logs in as HA's frontend does after its login flow (the tokens in localStorage "hassTokens") and saves
// ha-device.png (the edgeverify device page), ha-who-is-who.png (the companion's options, second step)
// ha-heard.png and ha-heard-attributes.png (the person's "heard" sensor) and ha-pipeline-debug.png (HA's
// debug view of the last Assist pipeline run), and with the companion's device, ha-inbox.png (its page: the
// voice inbox entities) and ha-inbox-attributes.png (the chosen utterance's attributes: what was said).
import { createRequire } from "node:module";

// playwright-core where PLAYWRIGHT_DIR says (npm install playwright-core there), else beside this script
const require = createRequire((process.env.PLAYWRIGHT_DIR || import.meta.dirname) + "/package.json");
const { chromium } = require("playwright-core");

const [url, token, outDir, deviceId, person, pipelineId, companionId] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 980 }, colorScheme: "light" });
  await page.goto(url + "/auth/authorize?response_type=code&client_id=" + encodeURIComponent(url + "/"));
  await page.evaluate(([u, t]) => localStorage.setItem("hassTokens", JSON.stringify({
    access_token: t, token_type: "Bearer", expires_in: 86400, hassUrl: u, clientId: u + "/",
    expires: Date.now() + 86400000, refresh_token: "",
  })), [url, token]);
  const settle = async () => { await page.waitForLoadState("networkidle"); await page.waitForTimeout(1500); };
  const attributes = async () => {  // HA >= 2025.x keeps a more-info dialog's attributes behind its menu
    const menu = page.locator("ha-more-info-dialog").getByRole("button", { name: /menu|more|options/i }).last();
    await menu.click({ timeout: 5000 }).then(() => page.getByRole("menuitem", { name: /attributes/i }).first().click({ timeout: 5000 }))
      .catch((e) => console.log(`no attributes view: ${e.message.split("\n")[0]}`));
    await settle();
  };

  await page.goto(`${url}/config/devices/device/${deviceId}`);
  await page.getByText("Speaker", { exact: false }).first().waitFor({ timeout: 30000 });
  await settle();
  await page.screenshot({ path: `${outDir}/ha-device.png` });

  await page.goto(`${url}/config/integrations/integration/edgeverify`);
  await page.getByRole("button", { name: /configure/i }).first().click({ timeout: 30000 });
  await page.getByText("Voice recognition settings").first().waitFor({ timeout: 30000 });
  await page.getByRole("button", { name: /^(submit|next)$/i }).first().click();
  await page.getByText("Who is who").first().waitFor({ timeout: 30000 });
  await settle();
  await page.screenshot({ path: `${outDir}/ha-who-is-who.png` });

  await page.goto(`${url}/config/entities?search=${encodeURIComponent(person + " heard")}`);
  await page.getByText(`${person} heard`, { exact: false }).first().click({ timeout: 30000 });
  await page.getByText("Detected").first().waitFor({ timeout: 30000 });
  await settle();  // the dialog's opening animation
  await page.screenshot({ path: `${outDir}/ha-heard.png` });
  await attributes();
  await page.screenshot({ path: `${outDir}/ha-heard-attributes.png` });

  if (companionId) {  // the companion's service device: the voice inbox entities, then what the chosen one said
    await page.goto(`${url}/config/devices/device/${companionId}`);
    await page.getByText("Voice inbox", { exact: false }).first().waitFor({ timeout: 30000 });
    await settle();
    await page.screenshot({ path: `${outDir}/ha-inbox.png` });
    await page.goto(`${url}/config/entities?search=${encodeURIComponent("Inbox utterance")}`);
    await page.getByText("Inbox utterance", { exact: false }).first().click({ timeout: 30000 });
    await settle();
    await attributes();
    await page.screenshot({ path: `${outDir}/ha-inbox-attributes.png` });
    await page.keyboard.press("Escape");
  }

  if (pipelineId) {  // Settings > Voice assistants > the assistant > Debug: the last satellite run
    await page.goto(`${url}/config/voice-assistants/debug/${pipelineId}`);
    await page.getByText("conversation.edgeverify", { exact: false }).first().waitFor({ timeout: 30000 })
      .catch((e) => console.log(`debug view: ${e.message.split("\n")[0]}`));
    await settle();
    await page.screenshot({ path: `${outDir}/ha-pipeline-debug.png` });
  }
} finally {
  await browser.close();
}
