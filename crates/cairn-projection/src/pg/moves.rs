//! Checkpoint moves between instances, by LISTEN/NOTIFY: the owner of a projection
//! notifies [`CHANNEL`] with the projection's name in the transaction that moves its
//! checkpoint (so the notification arrives only if the move committed), and every
//! instance keeps one connection that LISTENs and wakes its followers of that
//! projection (`drive.rs`) at once, instead of at their next periodic read. A lost
//! connection is opened again; a notification missed meanwhile costs only the wait
//! for the periodic read.

use std::time::Duration;

use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

/// The channel; the payload is the projection's name.
pub(crate) const CHANNEL: &str = "cairn_projections";

/// Notifications buffered for followers that have not looked yet; one that falls
/// behind further reads the checkpoint table anyway.
pub(crate) const BUFFERED: usize = 256;

/// Listens for checkpoint moves until `cancel`, sending each projection name on
/// `moved`; reconnects after any failure.
pub(crate) async fn listen(
    config: tokio_postgres::Config,
    moved: broadcast::Sender<String>,
    cancel: CancellationToken,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        let started = tokio::time::Instant::now();
        let error = tokio::select! {
            () = cancel.cancelled() => return,
            error = listen_once(&config, &moved) => error,
        };
        tracing::debug!(%error, "read models: the LISTEN connection failed; reconnecting");
        if started.elapsed() > Duration::from_secs(10) {
            pause = Duration::from_millis(100); // it had been working: retry soon
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// One LISTEN connection, for as long as it works; returns why it stopped.
async fn listen_once(config: &tokio_postgres::Config, moved: &broadcast::Sender<String>) -> String {
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(connected) => connected,
        Err(error) => return error.to_string(),
    };
    let forward = moved.clone();
    let mut driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    // Nobody following is not an error.
                    let _ = forward.send(notification.payload().to_owned());
                }
                Ok(_) => {}
                Err(error) => return error.to_string(),
            }
        }
        "the connection ended".to_owned()
    });
    if let Err(error) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        driver.abort();
        return error.to_string();
    }
    tracing::debug!("read models: listening for checkpoint moves");
    let ended = (&mut driver).await;
    drop(client);
    ended.unwrap_or_else(|error| error.to_string())
}

/// Waits for a notification that `name` moved. A follower that fell behind the buffer
/// is woken too (it reads the table anyway); with the listener gone, it waits forever
/// and the periodic read takes over.
pub(crate) async fn moved(receiver: &mut broadcast::Receiver<String>, name: &str) {
    loop {
        match receiver.recv().await {
            Ok(moved) if moved == name => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}
