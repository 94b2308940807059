//! `cairn top`: a live view of a running Cairn, built from its `/metrics`. Every
//! `--interval` it scrapes again and redraws (clear screen, cursor home) a frame of the
//! rates and percentiles over the last interval and the gauges as they are now. A
//! server that cannot be reached is shown as an error line above the last good frame,
//! and scraped again next interval; Ctrl-C ends it.

mod frame;
pub mod prometheus;

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use cairn_client::Client;

use crate::cli::TopArgs;

/// Clears the screen and moves the cursor home.
const CLEAR: &str = "\x1b[2J\x1b[H";

/// One scrape and when it was taken.
struct Scrape {
    metrics: prometheus::Metrics,
    at: Instant,
}

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let client = client(&args)?;
    let title = format!(
        "{}  every {}",
        args.client.url,
        interval_text(args.interval)
    );
    if args.once {
        let before = scrape(&client).await?;
        tokio::time::sleep(args.interval).await;
        let after = scrape(&client).await?;
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(render(&title, &before, &after).as_bytes())
            .context("cannot write to stdout")?;
        return stdout.flush().context("cannot write to stdout");
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut ticks = tokio::time::interval(args.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<Scrape> = None;
    let mut last_frame = String::new();
    loop {
        let screen = tokio::select! {
            _ = &mut ctrl_c => break,
            screen = async {
                ticks.tick().await;
                match scrape(&client).await {
                    Ok(current) => {
                        last_frame = match &previous {
                            Some(before) => render(&title, before, &current),
                            None => format!("cairn top  {title}\n\nwaiting for a second sample…\n"),
                        };
                        previous = Some(current);
                        last_frame.clone()
                    }
                    Err(error) => {
                        let stamp = clock_text(SystemTime::now());
                        let mut screen = format!(
                            "{stamp} UTC  cannot read {}/metrics: {} (retrying every {})\n",
                            args.client.url.trim_end_matches('/'),
                            crate::describe_error(&error).trim_start_matches("error: "),
                            interval_text(args.interval),
                        );
                        if !last_frame.is_empty() {
                            screen.push_str("\nthe last frame read:\n\n");
                            screen.push_str(&last_frame);
                        }
                        screen
                    }
                }
            } => screen,
        };
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(format!("{CLEAR}{screen}").as_bytes())
            .and_then(|()| stdout.flush())
            .context("cannot write to stdout")?;
    }
    Ok(())
}

/// The client for `/metrics`: `--url`, `--ca-cert`, `--token`; no retries (the next
/// interval is the retry) and a timeout of about one interval.
fn client(args: &TopArgs) -> anyhow::Result<Client> {
    let builder = Client::builder(&args.client.url)
        .retries(0)
        .timeout(args.interval.max(Duration::from_secs(2)));
    super::build_client(builder, &args.client)
}

async fn scrape(client: &Client) -> anyhow::Result<Scrape> {
    let text = client.metrics().await.context("cannot read /metrics")?;
    let at = Instant::now();
    let metrics = prometheus::parse(&text).context("/metrics is not Prometheus text")?;
    Ok(Scrape { metrics, at })
}

fn render(title: &str, before: &Scrape, after: &Scrape) -> String {
    let interval = prometheus::Interval {
        before: &before.metrics,
        after: &after.metrics,
        seconds: after.at.duration_since(before.at).as_secs_f64(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    frame::render(title, &interval, now)
}

fn interval_text(interval: Duration) -> String {
    if interval.subsec_millis() == 0 {
        format!("{}s", interval.as_secs())
    } else {
        format!("{}ms", interval.as_millis())
    }
}

/// `HH:MM:SS` (UTC) of `time`.
fn clock_text(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60
    )
}
