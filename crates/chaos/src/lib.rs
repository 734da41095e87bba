//! chaos: a fault-injection harness for selfheal.
//!
//! Why it exists: a self-healing library is only worth what it changes for
//! users under real faults. chaos runs a web app on loopback (in-process, or
//! as child processes it can kill with SIGKILL), drives virtual users
//! through it while injecting *real* faults (a held SQLite write lock,
//! upstream 429/503/stalls/resets through a TCP proxy, an SMTP server that
//! really goes away, corrupted sessions, panics, a killed process) and
//! reports what users saw with healing on and off.
//!
//! [`driver`] runs one scenario against cozmic (the reference app); the
//! rest is app-independent infrastructure:
//!
//! * [`plan`]: the fault plan (TOML).
//! * [`faults`]: the per-request upstream fault decision shared by proxy and servers.
//! * [`ledger`]: every injected fault, what it struck, and what the user saw there.
//! * [`proxy`]: a TCP fault proxy (reset, stall, latency, storm).
//! * [`link`]: a TCP link-fault proxy for database and Redis connections
//!   (reset, stall, partition on a seeded schedule).
//! * [`balancer`]: a round-robin TCP load balancer in front of app instances (the fleet run).
//! * [`upstream`]: local OpenAI- and Stripe-compatible HTTP servers.
//! * [`smtp`]: a real SMTP server that can go down and come back on the same port.
//! * [`overload`]: the overload suite (a metastable retry storm, the app offered 3× its capacity).
//! * [`report`]: the outcome recorder, summaries, and the text/Markdown, JSON and SVG outputs.
//! * [`progress`]: progress bars.
//! * [`cli`]: the command line.

pub mod balancer;
pub mod cli;
pub mod driver;
pub mod faults;
pub mod ledger;
pub mod link;
pub mod overload;
pub mod plan;
pub mod progress;
pub mod proxy;
pub mod report;
pub mod smtp;
pub mod upstream;
