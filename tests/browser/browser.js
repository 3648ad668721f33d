// What the browser tests share: their settings from the environment, and Debian's chromium
// launched headless with the flags that work on this project's machines (its own browser
// download is never used).
'use strict';
const { chromium } = require('playwright-core');

/** The value of environment variable `k`; a missing one stops the run. */
function env(k) {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
}

/** Debian's chromium, headless. */
function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** Runs `body` and prints what it returns as one JSON line; a failure exits 1 with its stack. */
function report(name, body) {
  body().then(
    (out) => process.stdout.write(JSON.stringify(out) + '\n'),
    (e) => {
      process.stderr.write(`${name}: ${e.stack || e}\n`);
      process.exit(1);
    },
  );
}

module.exports = { env, launch, report };
