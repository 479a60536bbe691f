//! Reaching the network's broker: the options every `berryctl` command shares, and a
//! connection made and checked (CONNACK) before anything is published. TLS is the
//! gateways' own (`berrygw_proto::tls`); plaintext to another machine is refused unless
//! asked for, as on the gateways.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use berrygw_proto::broker::BrokerUrl;
use berrygw_proto::tls::{client_config, TlsFiles};
use berrygw_proto::topics::AppTopics;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};

#[derive(clap::Args)]
pub struct BrokerArgs {
    /// The network's broker: mqtts://host:port (TLS) or mqtt://host:port.
    #[arg(long)]
    pub broker: BrokerUrl,
    /// CA bundle (PEM) the broker's certificate must chain to; system roots otherwise.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, requires = "client_key_file")]
    pub client_cert_file: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, requires = "client_cert_file")]
    pub client_key_file: Option<PathBuf>,
    #[arg(long)]
    pub username: Option<String>,
    /// A file holding the password (never the password itself on the command line).
    #[arg(long, requires = "username")]
    pub password_file: Option<PathBuf>,
    /// Allow mqtt:// to another machine: credentials and commands then cross the network in clear.
    #[arg(long)]
    pub allow_plaintext: bool,
    /// The gateways' app topic prefix (`[sinks.app] topic_prefix`).
    #[arg(long, default_value = "berrygw")]
    pub prefix: String,
}

impl BrokerArgs {
    /// The app topics of gateway `gateway_id`.
    pub fn topics(&self, gateway_id: &str) -> AppTopics {
        AppTopics::new(&self.prefix, gateway_id)
    }

    /// Every message the broker delivers on `filters` within `wait` (the retained ones, and
    /// whatever is published meanwhile), as (topic, payload).
    pub async fn retained(
        &self,
        filters: &[String],
        wait: Duration,
    ) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let (client, mut eventloop) = self.connect(wait.max(Duration::from_secs(5))).await?;
        for filter in filters {
            client.subscribe(filter, QoS::AtLeastOnce).await?;
        }
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(event) => event?,
                Err(_) => break,
            };
            if let Event::Incoming(Packet::Publish(p)) = event {
                out.push((p.topic.clone(), p.payload.to_vec()));
            }
        }
        let _ = client.disconnect().await;
        Ok(out)
    }

    /// Connected (CONNACK received) within `within`.
    pub async fn connect(&self, within: Duration) -> anyhow::Result<(AsyncClient, EventLoop)> {
        let url = &self.broker;
        if !url.tls && !url.is_loopback() && !self.allow_plaintext {
            bail!("plaintext MQTT to {} would send credentials and commands in clear; use mqtts:// or --allow-plaintext", url.host);
        }
        let client_id = format!("berryctl-{}-{:08x}", std::process::id(), rand::random::<u32>());
        let mut o = MqttOptions::new(client_id, url.host.clone(), url.port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_session(true);
        // A configuration bundle may be megabytes (`bundle push` sends one and reads the
        // retained copy back).
        let bundle = berrygw_proto::bundle::MAX_BUNDLE_BYTES + 1024;
        o.set_max_packet_size(bundle, bundle);
        if let Some(user) = &self.username {
            let password = match &self.password_file {
                Some(f) => std::fs::read_to_string(f)
                    .with_context(|| format!("--password-file {}", f.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                None => String::new(),
            };
            o.set_credentials(user.clone(), password);
        }
        if url.tls {
            let files = TlsFiles {
                ca_file: self.ca_file.as_deref(),
                client_cert_file: self.client_cert_file.as_deref(),
                client_key_file: self.client_key_file.as_deref(),
            };
            let tls = client_config(&files)?;
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        } else if self.ca_file.is_some() || self.client_cert_file.is_some() {
            bail!("certificate files need an mqtts:// broker");
        }
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        let connected = async {
            loop {
                match eventloop.poll().await.with_context(|| format!("connecting to {url}"))? {
                    Event::Incoming(Packet::ConnAck(ack)) => {
                        return match ack.code {
                            ConnectReturnCode::Success => Ok(()),
                            code => Err(anyhow!("{url} refused the connection: {code:?}")),
                        };
                    }
                    _ => continue,
                }
            }
        };
        tokio::time::timeout(within, connected)
            .await
            .map_err(|_| anyhow!("no answer from {url} within {} s", within.as_secs()))??;
        Ok((client, eventloop))
    }
}
