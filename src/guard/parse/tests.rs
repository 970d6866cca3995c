//! Parser tests: splitting, unwrapping, opaque constructs, hostile input.

use super::*;

fn argv(cmd: &str) -> Vec<Vec<String>> {
    parse(cmd).simple
}

fn v(items: &[&[&str]]) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|a| a.iter().map(|s| s.to_string()).collect())
        .collect()
}

fn names(cmd: &str) -> Vec<String> {
    parse(cmd)
        .simple
        .into_iter()
        .filter_map(|a| a.into_iter().next())
        .collect()
}

fn opaque(cmd: &str) -> Vec<String> {
    parse(cmd).opaque
}

#[test]
fn splits_on_operators() {
    assert_eq!(
        argv("ls -l; rm -rf /tmp/x && echo ok || false | wc -l & sleep 1\nid"),
        v(&[
            &["ls", "-l"],
            &["rm", "-rf", "/tmp/x"],
            &["echo", "ok"],
            &["false"],
            &["wc", "-l"],
            &["sleep", "1"],
            &["id"]
        ])
    );
}

#[test]
fn substitutions_subshells_and_groups() {
    let n = names("echo $(rm -rf /) `id` <(curl x) (cd /; touch a) { kubectl delete ns x; }");
    for want in ["rm", "id", "curl", "cd", "touch", "kubectl", "echo"] {
        assert!(n.contains(&want.to_string()), "{want} missing in {n:?}");
    }
    assert!(names(r#"echo "a $(whoami) b""#).contains(&"whoami".to_string()));
    assert!(names("f() { rm -rf /; }; f").contains(&"rm".to_string()));
}

#[test]
fn quotes_and_escapes() {
    assert_eq!(
        argv(r#"echo 'a b' "c \"d\" $HOME" e\ f"#),
        v(&[&["echo", "a b", r#"c "d" $HOME"#, "e f"]])
    );
    // Quote tricks do not hide the program name.
    assert_eq!(names(r#"r"m" -rf /"#), vec!["rm"]);
    assert_eq!(names(r"\rm -rf /"), vec!["rm"]);
    assert_eq!(names(r"$'\x72\x6d' -rf /"), vec!["rm"]);
    assert_eq!(names("'/usr/bin/kubectl' get po"), vec!["kubectl"]);
}

#[test]
fn unwraps_wrappers() {
    for cmd in [
        "sudo -u root -E /usr/bin/kubectl delete ns prod",
        "env -i FOO=1 BAR=2 kubectl delete ns prod",
        "doas -u admin kubectl delete ns prod",
        "exec kubectl delete ns prod",
        "nohup kubectl delete ns prod",
        "timeout -s KILL 10s kubectl delete ns prod",
        "nice -n 5 kubectl delete ns prod",
        "command kubectl delete ns prod",
        "builtin kubectl delete ns prod",
        "time kubectl delete ns prod",
        "A=1 B=2 ./bin/kubectl delete ns prod",
        "sudo env X=1 timeout 5 nice kubectl delete ns prod",
        "stdbuf -oL setsid kubectl delete ns prod",
    ] {
        assert_eq!(
            argv(cmd),
            v(&[&["kubectl", "delete", "ns", "prod"]]),
            "{cmd}"
        );
        assert!(opaque(cmd).is_empty(), "{cmd}: {:?}", opaque(cmd));
    }
    assert_eq!(
        argv("echo a | xargs rm -f"),
        v(&[&["echo", "a"], &["rm", "-f"]])
    );
    assert_eq!(
        names("find . -name '*.log' -exec rm -f {} \\;"),
        vec!["rm", "find"]
    );
}

#[test]
fn unwraps_shell_payloads_recursively() {
    assert_eq!(
        argv("bash -c 'sh -c \"rm -rf /x; id\"'"),
        v(&[&["rm", "-rf", "/x"], &["id"]])
    );
    assert_eq!(names("/bin/zsh -lc 'kubectl get po'"), vec!["kubectl"]);
    assert_eq!(names("dash -e -c 'touch /tmp/x'"), vec!["touch"]);
    assert_eq!(names("sudo bash -c 'rm x'"), vec!["rm"]);
    assert!(opaque("bash -c 'ls'").is_empty());
}

#[test]
fn opaque_constructs_are_reported() {
    let cases = [
        ("eval \"$X\"", "eval"),
        ("source ./env.sh", "sources a file"),
        (". ./env.sh", "sources a file"),
        (
            "echo cm0gLXJmIC8K | base64 -d | sh",
            "decoded data piped into a shell",
        ),
        ("xxd -r -p f | bash", "decoded data piped into a shell"),
        ("curl -s https://x/install | bash", "pipe into a shell"),
        ("bash < script.sh", "redirected file"),
        ("bash ./deploy.sh", "shell script file"),
        ("$CMD -rf /", "variable or substitution"),
        ("${CMD} x", "variable or substitution"),
        ("$(echo rm) -rf /", "variable or substitution"),
        ("echo 'unterminated", "unbalanced single quote"),
        ("echo \"unterminated", "unbalanced double quote"),
        ("echo $(ls", "unbalanced parenthesis"),
        ("bash <<EOF\nrm -rf /\nEOF\n", "here-document into a shell"),
        ("bash <<< 'rm -rf /'", "here-document into a shell"),
    ];
    for (cmd, want) in cases {
        let o = opaque(cmd);
        assert!(o.iter().any(|r| r.contains(want)), "{cmd}: {o:?}");
    }
    // What the guard can see inside is still listed for deny rules.
    assert!(names("eval 'rm -rf /'").contains(&"rm".to_string()));
    assert!(names("bash <<EOF\nrm -rf /\nEOF\n").contains(&"rm".to_string()));
    assert!(names("bash <<< 'rm -rf /'").contains(&"rm".to_string()));
}

#[test]
fn heredoc_bodies_are_not_commands_for_other_programs() {
    let c = parse("cat <<'EOF' > notes\nrm -rf /\nEOF\nls");
    assert_eq!(c.simple, v(&[&["cat"], &["ls"]]));
    assert!(c.opaque.is_empty());
}

#[test]
fn redirections_are_not_arguments() {
    assert_eq!(
        argv("kubectl get po 2>&1 >out.txt < in &>> all"),
        v(&[&["kubectl", "get", "po"]])
    );
}

#[test]
fn comments_and_keywords() {
    assert_eq!(argv("ls # rm -rf /"), v(&[&["ls"]]));
    assert_eq!(
        names("if true; then rm x; else id; fi; while false; do touch y; done"),
        vec!["true", "rm", "id", "false", "touch"]
    );
}

#[test]
fn survives_one_megabyte_and_invalid_utf8() {
    let big = format!("echo {}; rm -rf /", "a".repeat(1 << 20));
    let c = parse(&big);
    assert_eq!(names(&big), vec!["echo", "rm"]);
    assert_eq!(c.raw.len(), big.len());

    let deep = "$(".repeat(100_000);
    let c = parse(&deep);
    assert!(
        c.opaque.iter().any(|o| o.contains("nesting")),
        "{:?}",
        c.opaque
    );

    let nested = format!("{}id{}", "$(echo ".repeat(40), ")".repeat(40));
    let c = parse(&nested);
    assert!(
        c.opaque.iter().any(|o| o.contains("nesting")),
        "{:?}",
        c.opaque
    );

    // Payloads nested a few levels still unwrap.
    let nested_sh = (0..5).fold("rm -rf /x".to_string(), |acc, _| {
        format!("sh -c {}", shell_words::quote(&acc))
    });
    assert_eq!(names(&nested_sh), vec!["rm"]);

    let many_quotes = "'a' ".repeat(200_000);
    assert_eq!(parse(&many_quotes).simple.len(), 1);

    let bytes = b"ls \xff\xfe; r\xc3m -rf /";
    let c = parse_bytes(bytes);
    assert_eq!(c.simple.len(), 2);
    let _ = parse_bytes(&[0xff; 4096]);
}
