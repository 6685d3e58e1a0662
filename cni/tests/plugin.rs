//! The plugin binary as a runtime calls it (CNI spec 1.0: `CNI_*`
//! environment, configuration on stdin, result or error on stdout), against a
//! stand-in agent socket: what it sends, what it prints, its error codes, and
//! `failOpen`. No root needed.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{json, Value};

const PLUGIN: &str = env!("CARGO_BIN_EXE_palisade-cni");

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("palisade-cni-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn conf(socket: &Path, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "test",
        "type": "palisade-cni",
        "socket": socket,
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "veth9", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "eth0", "sandbox": "/var/run/netns/p"}
            ],
            "ips": [{"address": "10.244.1.7/24", "interface": 1}]
        }
    });
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// Exit status and stdout (as JSON, `Null` when empty) and stderr.
fn run(command: &str, conf: &Value, env: &[(&str, &str)]) -> (bool, Value, String) {
    let mut child = Command::new(PLUGIN)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", "/var/run/netns/p")
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=api-0",
        )
        .env("CNI_PATH", "/opt/cni/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the plugin");
    // A plugin may exit without reading its configuration (VERSION does):
    // a closed pipe is its answer, not a failure of the test.
    match child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write stdin: {e}"),
        _ => {}
    }
    let out = child.wait_with_output().expect("plugin output");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stdout = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout {text:?}: {e}"))
    };
    (
        out.status.success(),
        stdout,
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A stand-in agent answering one request with `reply`; returns the request.
fn agent_once(socket: &Path, reply: Value) -> std::thread::JoinHandle<Value> {
    let l = UnixListener::bind(socket).expect("bind");
    std::thread::spawn(move || {
        let (s, _) = l.accept().expect("accept");
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).expect("request");
        let mut w = &s;
        w.write_all(format!("{reply}\n").as_bytes()).expect("reply");
        serde_json::from_str(&line).expect("request JSON")
    })
}

#[test]
fn add_sends_the_pods_interface_and_addresses_and_passes_the_result_on() {
    let d = temp_dir("add");
    let sock = d.join("agent.sock");
    let agent = agent_once(
        &sock,
        json!({"ok": true, "interface": "veth9", "ifindex": 12, "enforcement": "policy"}),
    );
    let (ok, out, err) = run("ADD", &conf(&sock, json!({})), &[]);
    let req = agent.join().expect("agent");
    assert!(ok, "{out} {err}");
    assert_eq!(req["command"], "ADD");
    assert_eq!(req["host_interfaces"], json!(["veth9"]));
    assert_eq!(req["ips"], json!(["10.244.1.7"]));
    assert_eq!(req["pod_namespace"], "web");
    assert_eq!(req["pod_name"], "api-0");
    assert_eq!(req["container_id"], "c1");
    // The previous result, passed on.
    assert_eq!(out["ips"][0]["address"], "10.244.1.7/24");
    assert_eq!(out["cniVersion"], "1.0.0");
    assert!(err.contains("web/api-0 enforced on veth9"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_refusal_is_a_cni_error_naming_the_pod() {
    let d = temp_dir("refused");
    let sock = d.join("agent.sock");
    let agent = agent_once(&sock, json!({"ok": false, "error": "no veth named veth9"}));
    let (ok, out, _) = run("ADD", &conf(&sock, json!({"failOpen": true})), &[]);
    agent.join().expect("agent");
    assert!(!ok);
    assert_eq!(out["code"], 100);
    assert!(
        out["msg"].as_str().unwrap_or("").contains("web/api-0"),
        "{out}"
    );
    assert_eq!(out["details"], "no veth named veth9");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn no_agent_fails_add_unless_fail_open_and_never_fails_del() {
    let d = temp_dir("noagent");
    let sock = d.join("absent.sock");
    let (ok, out, _) = run("ADD", &conf(&sock, json!({})), &[]);
    assert!(!ok);
    assert_eq!(out["code"], 11, "try again later: {out}");
    assert!(
        out["msg"].as_str().unwrap_or("").contains("not reachable"),
        "{out}"
    );
    let (ok, out, err) = run("ADD", &conf(&sock, json!({"failOpen": true})), &[]);
    assert!(ok, "{out}");
    assert_eq!(out["ips"][0]["address"], "10.244.1.7/24");
    assert!(err.contains("UNENFORCED"), "{err}");
    let (ok, out, _) = run("DEL", &conf(&sock, json!({})), &[]);
    assert!(ok && out.is_null(), "{out}");
    let (ok, out, _) = run("STATUS", &conf(&sock, json!({})), &[]);
    assert!(!ok);
    assert_eq!(out["code"], 50);
    let _ = std::fs::remove_dir_all(&d);
}

/// An agent that takes the request and answers nothing within the timeout
/// is alive (busy with other pods): ADD fails for a retry even with
/// `failOpen`, which is for an agent that is not there.
#[test]
fn a_slow_agent_fails_add_for_a_retry_even_with_fail_open() {
    let d = temp_dir("slow");
    let sock = d.join("agent.sock");
    let l = UnixListener::bind(&sock).expect("bind");
    let agent = std::thread::spawn(move || {
        let (s, _) = l.accept().expect("accept");
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).expect("request");
        // Hold the connection past the plugin's timeout, then close it.
        std::thread::sleep(std::time::Duration::from_millis(2500));
    });
    let extra = json!({"failOpen": true, "timeoutSeconds": 1});
    let (ok, out, err) = run("ADD", &conf(&sock, extra), &[]);
    agent.join().expect("agent");
    assert!(!ok, "{out} {err}");
    assert_eq!(out["code"], 11, "try again later: {out}");
    assert!(
        out["msg"].as_str().unwrap_or("").contains("did not answer"),
        "{out}"
    );
    assert!(!err.contains("UNENFORCED"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_calls_get_the_specs_error_codes() {
    let d = temp_dir("bad");
    let sock = d.join("agent.sock");
    let (ok, out, _) = run("VERSION", &json!({}), &[]);
    assert!(ok);
    assert!(out["supportedVersions"]
        .as_array()
        .is_some_and(|v| v.contains(&json!("1.0.0"))));
    let mut no_prev = conf(&sock, json!({}));
    no_prev.as_object_mut().map(|o| o.remove("prevResult"));
    let (ok, out, _) = run("ADD", &no_prev, &[]);
    assert!(!ok);
    assert_eq!(out["code"], 7);
    let (ok, out, _) = run("ADD", &conf(&sock, json!({})), &[("CNI_CONTAINERID", "")]);
    assert!(!ok);
    assert_eq!(out["code"], 4);
    let (ok, out, _) = run("ADD", &conf(&sock, json!({"cniVersion": "0.2.0"})), &[]);
    assert!(!ok);
    assert_eq!(out["code"], 1);
    let _ = std::fs::remove_dir_all(&d);
}
