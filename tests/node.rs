//! A node in process, driven through its admin socket.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{TestNode, make_repo, rid};
use knotd::{
    admin::{AdminError, Command, Payload},
    config::Config,
    node::{Node, NodeError},
};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn repos_added_over_the_socket_survive_restart() {
    let node = TestNode::spawn().await;
    let id = node.node.id();
    let mode = std::fs::metadata(node.node.admin_socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let key_mode = std::fs::metadata(node.data_dir.join("secret.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let reply = node
        .admin(Command::AddRepo {
            repo_id: rid("did:plc:abc123/website"),
            pds: None,
            record: None,
            peers: vec![],
        })
        .await
        .unwrap();
    assert!(matches!(reply, Payload::Done { .. }));
    node.admin(Command::AddRepo {
        repo_id: rid("did:web:example.com/notes"),
        pds: Some("https://pds.example.com".into()),
        record: None,
        peers: vec![],
    })
    .await
    .unwrap();
    assert_eq!(
        node.repo_ids().await,
        vec!["did:plc:abc123/website", "did:web:example.com/notes"]
    );

    let socket = node.node.admin_socket().to_path_buf();
    let node = node.restart().await;
    assert_eq!(node.node.id(), id, "node id must survive a restart");
    assert_eq!(
        node.repo_ids().await,
        vec!["did:plc:abc123/website", "did:web:example.com/notes"]
    );
    let Payload::Repos { repos } = node.admin(Command::List).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        repos[1].record.as_deref(),
        Some("at://did:web:example.com/app.knot.repo/notes")
    );

    node.admin(Command::RemoveRepo {
        repo_id: rid("did:plc:abc123/website"),
    })
    .await
    .unwrap();
    assert_eq!(node.repo_ids().await, vec!["did:web:example.com/notes"]);
    let err = node
        .admin(Command::RemoveRepo {
            repo_id: rid("did:plc:abc123/website"),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not tracked"), "{err}");
    node.stop().await;
    assert!(!socket.exists(), "socket file must be removed on shutdown");
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let node = TestNode::spawn().await;
    node.admin(Command::AddRepo {
        repo_id: rid("did:plc:abc123/website"),
        pds: None,
        record: None,
        peers: vec![],
    })
    .await
    .unwrap();
    // A raw line with a traversal attempt is rejected by the server.
    let raw = r#"{"cmd":"add-repo","repo_id":"did:plc:abc123/../../etc"}"#;
    let reply = raw_request(node.node.admin_socket(), raw).await;
    assert!(reply.contains("\"error\""), "{reply}");
    assert!(reply.contains("name"), "{reply}");
    // Bad tickets and foreign records are refused before anything is stored.
    for cmd in [
        Command::AddRepo {
            repo_id: rid("did:plc:abc123/other"),
            pds: None,
            record: None,
            peers: vec!["not-a-ticket".into()],
        },
        Command::AddRepo {
            repo_id: rid("did:plc:abc123/other"),
            pds: None,
            record: Some("at://did:plc:mallory/app.knot.repo/other".into()),
            peers: vec![],
        },
        Command::AddRepo {
            repo_id: rid("did:plc:abc123/other"),
            pds: Some("file:///etc/passwd".into()),
            record: None,
            peers: vec![],
        },
    ] {
        let err = node.admin(cmd).await.unwrap_err();
        assert!(matches!(err, AdminError::Remote(_)), "{err}");
    }
    assert_eq!(node.repo_ids().await, vec!["did:plc:abc123/website"]);
    // Unknown repos give a clear error.
    let err = node
        .admin(Command::Peers {
            repo_id: rid("did:plc:abc123/nope"),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("add-repo"), "{err}");
    node.stop().await;
}

#[tokio::test]
async fn status_ticket_and_peers() {
    let a = TestNode::spawn().await;
    let b = TestNode::spawn().await;
    let Payload::Ticket { ticket } = a.admin(Command::Ticket).await.unwrap() else {
        panic!()
    };
    let Payload::Status(status) = a.admin(Command::Status).await.unwrap() else {
        panic!()
    };
    assert_eq!(status.node_id, a.node.id().to_string());
    assert_eq!(status.repo_count, 0);
    assert!(status.addrs.iter().any(|s| s.starts_with("127.0.0.1:")));
    b.admin(Command::AddRepo {
        repo_id: rid("did:plc:abc123/website"),
        pds: None,
        record: None,
        peers: vec![ticket.clone()],
    })
    .await
    .unwrap();
    let Payload::Peers { peers } = b
        .admin(Command::Peers {
            repo_id: rid("did:plc:abc123/website"),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].hint.node_id, a.node.id().to_string());
    assert_eq!(peers[0].hint.ticket.as_deref(), Some(ticket.as_str()));
    // The ticket is dialable: B reaches A by id through its address book.
    let conn = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        b.node.endpoint().connect(a.node.id(), iroh_gossip::ALPN),
    )
    .await
    .expect("dial in time")
    .expect("dial succeeds");
    conn.close(0u32.into(), b"bye");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_live_socket_is_refused() {
    let a = TestNode::spawn().await;
    let other = tempfile::tempdir().unwrap();
    let mut config = Config::local(other.path());
    config.admin_socket = Some(a.node.admin_socket().to_path_buf());
    let err = Node::spawn(config, CancellationToken::new())
        .await
        .err()
        .expect("second node on the same socket must fail");
    assert!(matches!(err, NodeError::Admin(_)), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    // The first node is unaffected.
    assert!(a.admin(Command::Status).await.is_ok());
    a.stop().await;
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("knotd.sock"), b"left over from a crash").unwrap();
    let node = TestNode::spawn_in(dir.path()).await;
    assert!(node.admin(Command::Status).await.is_ok());
    node.stop().await;
}

/// Every numeric admin field at its extremes, sent as raw lines through the
/// socket of a node that holds a state (so a `replicas` wait sets a
/// deadline): values over a limit are refused naming the field and the
/// limit, the rest are answered, and no task of the node stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_admin_values_never_stop_the_node() {
    let mut node = TestNode::spawn().await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let repo = "did:plc:abc123/website";
    node.publish(repo, &src).await;
    let socket = node.node.admin_socket().to_path_buf();
    let send = |cmd: &'static str, fields: &'static str| {
        let socket = socket.clone();
        async move {
            let line = format!(r#"{{"cmd":"{cmd}","repo_id":"{repo}",{fields}}}"#);
            raw_request(&socket, &line).await
        }
    };
    for (fields, field, limit) in [
        (
            r#""count":1,"timeout_secs":18446744073709551615"#,
            "timeout_secs 18446744073709551615",
            "86400",
        ),
        (
            r#""count":0,"timeout_secs":100000000"#,
            "timeout_secs 100000000",
            "86400",
        ),
        (
            r#""count":1,"timeout_secs":86401"#,
            "timeout_secs 86401",
            "86400",
        ),
        (
            r#""count":4294967295,"timeout_secs":1"#,
            "count 4294967295",
            "64",
        ),
        (r#""count":65,"timeout_secs":1"#, "count 65", "64"),
    ] {
        let reply = send("replicas", fields).await;
        assert!(
            reply.contains(r#""error""#) && reply.contains(field) && reply.contains(limit),
            "{fields}: {reply}"
        );
    }
    for fields in [
        r#""count":4294967296,"timeout_secs":1"#,
        r#""count":1,"timeout_secs":18446744073709551616"#,
        r#""count":-1,"timeout_secs":-1"#,
        r#""count":1,"timeout_secs":1e300"#,
    ] {
        let reply = send("replicas", fields).await;
        assert!(reply.contains(r#""error""#), "{fields}: {reply}");
    }
    // At the limits: answered (nobody else is needed for a count of 0).
    for fields in [
        r#""count":0,"timeout_secs":86400"#,
        r#""count":0,"timeout_secs":0"#,
    ] {
        let reply = send("replicas", fields).await;
        assert!(reply.contains(r#""kind":"replicas""#), "{fields}: {reply}");
    }
    for fields in [
        r#""max_bytes":18446744073709551615"#,
        r#""max_bytes":0"#,
        r#""max_bytes":null"#,
    ] {
        let reply = send("set-quota", fields).await;
        assert!(reply.contains(r#""ok""#), "{fields}: {reply}");
    }
    let reply = send("set-quota", r#""max_bytes":18446744073709551616"#).await;
    assert!(reply.contains(r#""error""#), "{reply}");

    // The node keeps running: it answers, and none of its tasks stopped.
    assert!(node.admin(Command::Status).await.is_ok());
    let stopped = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        node.node.supervise(&CancellationToken::new()),
    )
    .await;
    assert!(stopped.is_err(), "a task of the node stopped: {stopped:?}");
    node.stop().await;
}

async fn raw_request(socket: &std::path::Path, line: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    stream.write_all(line.as_bytes()).await.unwrap();
    stream.write_all(b"\n").await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut reply = String::new();
    reader.read_line(&mut reply).await.unwrap();
    reply
}
