//! Optional TLS on the HTTP port: a certificate made in the test (rcgen), a real rustls client,
//! HTTPS requests and a WebSocket join over it; plain HTTP on that port gets nowhere.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chorus_signal::protocol::ServerMessage;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

/// Removes the test's certificate directory.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn client_config(cert_der: Vec<u8>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(cert_der))
        .expect("trust the test certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the test certificate")
}

#[tokio::test]
async fn the_http_port_speaks_tls_with_the_configured_certificate() {
    let dir = TempDir(std::env::temp_dir().join(format!("chorus-tls-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("dir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert_path = dir.0.join("cert.pem");
    let key_path = dir.0.join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("write key");
    let server = common::server_with(|c| {
        c.server.tls_cert = Some(cert_path.clone());
        c.server.tls_key = Some(key_path.clone());
    })
    .await;
    assert!(server.base_url().starts_with("https://"));
    let config = client_config(certified.cert.der().to_vec());

    // HTTPS: /healthz answers over TLS.
    let mut tls = tls_connect(server.http_addr, config.clone()).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut reply = String::new();
    tls.read_to_string(&mut reply).await.expect("read");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("ok"), "{reply}");

    // WSS: a join over the TLS port.
    let stream = tls_connect(server.http_addr, config).await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", stream)
        .await
        .expect("websocket over TLS");
    let join = serde_json::json!({"type":"join","version":1,"token":common::token(&common::room(), "secure")});
    ws.send(Message::text(join.to_string()))
        .await
        .expect("send");
    let first = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => break t,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no answer to join: {other:?}"),
        }
    };
    let joined: ServerMessage = serde_json::from_str(&first).expect("JSON");
    assert!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut out)).await;
    assert!(!out.starts_with(b"HTTP/1.1 200"), "plain HTTP was served");
}

#[tokio::test]
async fn a_missing_or_mismatched_certificate_is_a_startup_error() {
    let mut config = chorus_server::Config::default();
    config.server.http_bind = "127.0.0.1:0".parse().expect("addr");
    config.media.udp_port = 0;
    config.server.tls_cert = Some("/nonexistent/cert.pem".into());
    config.server.tls_key = Some("/nonexistent/key.pem".into());
    let err = chorus_server::start(config.clone())
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{err:#}").contains("/nonexistent/cert.pem"),
        "{err:#}"
    );
    config.server.tls_key = None;
    let err = chorus_server::start(config).await.err().expect("refused");
    assert!(format!("{err:#}").contains("tls_key"), "{err:#}");
}
