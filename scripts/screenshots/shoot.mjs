// Drives a running cozmic like a student and an admin would, and saves the
// README screenshots. Run by ../screenshots.sh, which starts the app.
import { chromium } from 'playwright-core';

const base = process.env.COZMIC_URL;
const token = process.env.ADMIN_TOKEN;
const out = process.env.OUT_DIR;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
const phone = { viewport: { width: 412, height: 870 }, deviceScaleFactor: 2 };

const student = await (await browser.newContext(phone)).newPage();
await student.goto(`${base}/signup`);
await student.fill('#name', 'Ada');
await student.fill('#email', 'ada@example.com');
await student.fill('#password', 'correct horse battery');
await Promise.all([student.waitForURL('**/dashboard'), student.click('button[type=submit]')]);
for (const lesson of ['light-years', 'phases-of-the-moon', 'seasons', 'black-holes']) {
  await student.goto(`${base}/lessons/${lesson}`);
  await Promise.all([student.waitForURL('**/dashboard**'), student.click('form[action$=complete] button')]);
}
// The AI provider is unreachable in this demo: the tutor answers kindly
// (503), and the admin page shows what was retried and recorded.
for (const question of ['Why is the sky dark at night?', 'How hot is the Sun?']) {
  await student.goto(`${base}/tutor`);
  await student.fill('#question', question);
  await Promise.all([student.waitForLoadState('load'), student.click('form[action="/tutor"] button')]);
}
await student.goto(`${base}/lessons/exoplanets`);
await Promise.all([student.waitForURL('**/dashboard**'), student.click('form[action$=complete] button')]);
await student.screenshot({ path: `${out}/cozmic-dashboard.png`, fullPage: true });

const admin = await (await browser.newContext(phone)).newPage();
await admin.goto(`${base}/admin/login`);
await admin.fill('input[name=token]', token);
// Wait for the redirect to the health page: the sign-in sets the cookie there.
await Promise.all([admin.waitForURL('**/admin/health'), admin.click('form[action="/admin/login"] button')]);
await admin.goto(`${base}/admin/health`);
await admin.screenshot({ path: `${out}/admin-health.png`, fullPage: true });
await browser.close();
