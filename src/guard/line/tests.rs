//! Line tracker tests, fed with the bytes bash and a terminal exchange.

use super::*;

const A: &[u8] = b"\x1b]133;A\x07";
const B: &[u8] = b"\x1b]133;B\x07";
const C: &[u8] = b"\x1b]133;C\x07";

fn prompt(t: &mut LineTracker) {
    let mut p = Vec::new();
    p.extend_from_slice(A);
    p.extend_from_slice(b"alice@host:~$ ");
    p.extend_from_slice(B);
    t.output(&p);
}

/// Type `keys`, echo `echo` from the shell, return the actions of the keys.
fn type_keys(t: &mut LineTracker, keys: &[u8], echo: &[u8]) -> Vec<Action> {
    let a = t.input(keys);
    t.output(echo);
    a
}

#[test]
fn plain_typing_with_marks_reads_the_screen() {
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    let a = type_keys(&mut t, b"ls -l", b"ls -l");
    assert_eq!(a, vec![Action::Forward(b"ls -l".to_vec())]);
    let a = t.input(b"\r");
    assert_eq!(a, vec![Action::Enter(b"\r".to_vec())]);
    assert_eq!(
        t.line(),
        Submitted {
            line: "ls -l".into(),
            certainty: Certainty::Screen
        }
    );
}

#[test]
fn history_recall_is_read_from_the_screen() {
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    // Up arrow: bash redraws the recalled line.
    type_keys(&mut t, b"\x1b[A", b"rm -rf /tmp/important");
    let s = t.line();
    assert_eq!(s.line, "rm -rf /tmp/important");
    assert_eq!(s.certainty, Certainty::Screen);
}

#[test]
fn tab_completion_is_read_from_the_screen() {
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    type_keys(&mut t, b"kubectl del", b"kubectl del");
    type_keys(&mut t, b"\t", b"ete ");
    type_keys(&mut t, b"ns prod", b"ns prod");
    assert_eq!(t.line().line, "kubectl delete ns prod");
    assert!(!t.line().is_unsure());
}

#[test]
fn readline_editing_and_wrapping() {
    let mut t = LineTracker::new(24, 20);
    prompt(&mut t); // 14 columns of prompt
    // Long line wraps; then Ctrl-A and insert at the start (bash redraws).
    type_keys(&mut t, b"echo aaaaaaaaaaaaaaaa", b"echo aaaaaaaaaaaaaaaa");
    assert_eq!(t.line().line, "echo aaaaaaaaaaaaaaaa");
    // Backspace: bash echoes BS, space, BS.
    type_keys(&mut t, b"\x7f", b"\x08 \x08");
    assert_eq!(t.line().line, "echo aaaaaaaaaaaaaaa");
    assert_eq!(t.line().certainty, Certainty::Screen);
}

#[test]
fn without_marks_typed_input_is_used_and_history_is_unsure() {
    let mut t = LineTracker::new(24, 80);
    t.output(b"$ ");
    t.input(b"rm -rf xx\x7f\x7fy");
    let s = t.line();
    assert_eq!(s.line, "rm -rf y");
    assert_eq!(s.certainty, Certainty::Typed);
    t.cleared();
    t.input(b"echo a b c\x17\x17d");
    assert_eq!(t.line().line, "echo a d");
    t.cleared();
    t.input(b"abc\x1b[D\x1b[DX");
    assert_eq!(t.line().line, "aXbc");
    t.cleared();
    t.input(b"\x1b[A");
    assert!(t.line().is_unsure());
    t.cleared();
    t.input(b"ls\t");
    assert!(t.line().is_unsure());
}

#[test]
fn hiding_tricks_make_it_unsure() {
    // Output that resets or clears the screen after the prompt.
    for trick in [&b"\x1bc"[..], b"\x1b[2J", b"\x1b[?1049h"] {
        let mut t = LineTracker::new(24, 80);
        prompt(&mut t);
        type_keys(&mut t, b"id", b"id");
        t.output(trick);
        assert!(t.line().is_unsure(), "{trick:?}");
    }
    // A carriage return overwriting the echoed command: the screen shows
    // something else than what was typed.
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    type_keys(&mut t, b"rm -rf /", b"rm -rf /\r\x1b[Kalice@host:~$ ls");
    assert!(t.line().is_unsure());
    // Ctrl-V ESC (literal escape inserted into the line).
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    type_keys(&mut t, b"echo \x16\x1b[8mhidden", b"echo ^[[8mhidden");
    assert!(t.line().is_unsure());
    // Colors do not hide text from the model.
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    t.input(b"rm x");
    t.output(b"\x1b[30;40mrm x\x1b[0m");
    assert_eq!(t.line().line, "rm x");
}

#[test]
fn enter_outside_a_prompt_is_unsure_once_marks_were_seen() {
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    type_keys(&mut t, b"sleep 10", b"sleep 10");
    t.input(b"\r");
    t.submitted();
    t.output(b"\r\n");
    t.output(C);
    // Typing while a command runs (e.g. into `cat` or a nested program).
    t.input(b"rm -rf /");
    assert!(t.line().is_unsure());
}

#[test]
fn bracketed_paste_checks_the_whole_paste_at_enter() {
    let mut t = LineTracker::new(24, 80);
    t.output(b"\x1b[?2004h");
    prompt(&mut t);
    let a = t.input(b"\x1b[200~echo a\rrm -rf /\x1b[201~");
    // No Enter inside the paste: the shell only inserts the newline.
    assert!(a.iter().all(|x| matches!(x, Action::Forward(_))), "{a:?}");
    t.output(b"echo a\r\nrm -rf /");
    let a = t.input(b"\r");
    assert_eq!(a, vec![Action::Enter(b"\r".to_vec())]);
    let s = t.line();
    assert!(s.line.contains("rm -rf /"), "{s:?}");
    // Without bracketed paste in the shell, every newline is an Enter.
    let mut t = LineTracker::new(24, 80);
    let a = t.input(b"\x1b[200~echo a\rrm -rf /\r\x1b[201~");
    assert_eq!(
        a.iter().filter(|x| matches!(x, Action::Enter(_))).count(),
        2
    );
}

#[test]
fn marks_split_across_chunks_and_garbage_survive() {
    let mut t = LineTracker::new(24, 80);
    let mut all = Vec::new();
    all.extend_from_slice(A);
    all.extend_from_slice(b"$ ");
    all.extend_from_slice(B);
    all.extend_from_slice(b"whoami");
    for b in &all {
        t.output(std::slice::from_ref(b));
    }
    t.input(b"whoami");
    assert_eq!(
        t.line(),
        Submitted {
            line: "whoami".into(),
            certainty: Certainty::Screen
        }
    );
    // Garbage does not crash it.
    t.output(&[0xff; 1000]);
    t.output(b"\x1b]133;");
    t.output(&vec![b'x'; 10_000]);
    t.input(&[0xff, 0xfe, 0x1b, 0x1b, 0x1b]);
    let _ = t.line();
}

#[test]
fn the_rcfile_emits_the_marks() {
    assert!(BASH_RC.contains("133;A"));
    assert!(BASH_RC.contains("133;B"));
    assert!(BASH_RC.contains("133;C"));
    assert!(BASH_RC.contains("enable-bracketed-paste on"));
}

/// Bytes recorded from a real bash 5 with `shell-integration.bash` in a
/// 24x20 pty (the prompt itself wraps): Tab completion, Ctrl-A and insert,
/// a wrapped line, Ctrl-U, Ctrl-C.
#[test]
fn recorded_bash_session() {
    let mut t = LineTracker::new(24, 20);
    let step = |t: &mut LineTracker, keys: &[u8], out: &[u8]| {
        let _ = t.input(keys);
        t.output(out);
        t.line()
    };
    t.output(
        b"\x1b]133;D;0\x07\x1b[?2004h\x1b]133;A\x07root@vm:/work/wt/maskguard# \x1b]133;B\x07",
    );
    assert_eq!(step(&mut t, b"ech", b"ech").line, "ech");
    assert_eq!(step(&mut t, b"\t", b"o ").line, "echo");
    assert_eq!(step(&mut t, b"hi", b"hi").line, "echo hi");
    step(&mut t, b"\x01", b"\x08\x08\x08\x08\x08\x08\x08");
    let s = step(
        &mut t,
        b"sudo ",
        b"sudo echo hi \x1b[A\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C",
    );
    assert_eq!(s.line, "sudo echo hi");
    assert_eq!(s.certainty, Certainty::Screen);
    step(&mut t, b"\x05", b"\r\n\r");
    let s = step(&mut t, b" aaaaaaaaaaaaaaaaaaaa", b" aaaaaaaaaaaaaaaaaaaa");
    assert_eq!(s.line, "sudo echo hi aaaaaaaaaaaaaaaaaaaa");
    let s = step(
        &mut t,
        b"\x15",
        b"\x1b[A\x1b[A\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[K\r\n\r\x1b[K\r\n\r\x1b[K\x1b[A\x1b[A\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C",
    );
    assert_eq!(s.line, "");
    assert_eq!(
        step(&mut t, b"echo x | base", b"echo x | base").line,
        "echo x | base"
    );
    let s = step(
        &mut t,
        b"\x03",
        b"^C\x1b[?2004l\r\x1b[?2004h\x1b[?2004l\r\r\n\x1b]133;D;130\x07\x1b[?2004h\x1b]133;A\x07root@vm:/work/wt/maskguard# \x1b]133;B\x07",
    );
    assert_eq!(s.line, "");
    assert_eq!(s.certainty, Certainty::Screen);
}

#[test]
fn an_enter_is_never_swallowed_by_an_escape_sequence() {
    // ESC then CR in one chunk: the CR is still an Enter to check.
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    type_keys(&mut t, b"rm x", b"rm x");
    let a = t.input(b"\x1b\r");
    assert_eq!(
        a,
        vec![
            Action::Forward(b"\x1b".to_vec()),
            Action::Enter(b"\r".to_vec())
        ]
    );
    assert_eq!(t.line().line, "rm x");
    // Ctrl-V ESC: the ESC is literal, the CR after it a real Enter, and
    // the line untrustworthy (hidden text).
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    type_keys(&mut t, b"touch x #", b"touch x #");
    let a = t.input(b"\x16\x1b\r");
    assert_eq!(a.last(), Some(&Action::Enter(b"\r".to_vec())));
    assert!(t.line().is_unsure());
    // Ctrl-V CR inserts a literal CR: not an Enter.
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    let a = t.input(b"a\x16\rb");
    assert!(a.iter().all(|x| matches!(x, Action::Forward(_))), "{a:?}");
}

#[test]
fn ctrl_o_runs_the_line_so_it_is_an_enter() {
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    let a = type_keys(&mut t, b"id\x0f", b"id");
    assert_eq!(a.last(), Some(&Action::Enter(vec![0x0f])));
}

#[test]
fn a_sync_redraw_keeps_the_line_and_the_sync_key_in_input_is_hostile() {
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    type_keys(&mut t, b"ls -l", b"ls -l");
    assert!(t.at_prompt());
    let n = t.syncs();
    // What bash prints for the bound sync key: clear, S, redraw.
    t.output(b"\r\x1b[K\r\x1b]133;S\x07\x1b]133;A\x07alice@host:~$ \x1b]133;B\x07ls -l");
    assert_eq!(t.syncs(), n + 1);
    assert!(t.at_prompt());
    assert_eq!(
        t.line(),
        Submitted {
            line: "ls -l".into(),
            certainty: Certainty::Screen
        }
    );
    // The user typing the sync key themselves cannot fake an answer
    // unnoticed: the line becomes unsure.
    t.input(SYNC_KEY);
    assert!(t.line().is_unsure());
}

#[test]
fn command_output_is_not_modelled_and_the_next_prompt_starts_fresh() {
    let mut t = LineTracker::new(24, 80);
    t.output(b"\x1b[?2004h");
    prompt(&mut t);
    type_keys(&mut t, b"cat big", b"cat big");
    t.input(b"\r");
    t.submitted();
    t.output(b"\r\n\x1b[?2004l\r");
    t.output(C);
    // Whatever the command prints (alternate screen, scroll region, a
    // cursor left mid-row, lots of it), the next prompt is read right.
    t.output(b"\x1b[?1049h\x1b[5;10r\x1b[2J");
    for _ in 0..1000 {
        t.output(&[b'x'; 997]);
    }
    assert!(!t.shell_paste());
    // The paste mode switch arrives split across chunks.
    t.output(b"\x1b]133;D;0\x07\x1b[?20");
    t.output(b"04h");
    assert!(t.shell_paste());
    prompt(&mut t);
    type_keys(&mut t, b"rm x", b"rm x");
    assert_eq!(
        t.line(),
        Submitted {
            line: "rm x".into(),
            certainty: Certainty::Screen
        }
    );
}

#[test]
fn keys_typed_ahead_of_the_prompt_are_part_of_the_line() {
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    type_keys(&mut t, b"sleep 1", b"sleep 1");
    t.input(b"\r");
    t.submitted();
    t.output(b"\r\n");
    t.output(C);
    // Typed while the command runs; the tty echoes, bash reads it later.
    t.input(b"ex");
    t.output(b"ex");
    t.output(b"\x1b]133;D;0\x07");
    prompt(&mut t);
    t.output(b"ex");
    type_keys(&mut t, b"it", b"it");
    assert_eq!(
        t.line(),
        Submitted {
            line: "exit".into(),
            certainty: Certainty::Screen
        }
    );
    // Keys a program ate (not shown at the prompt) do not disturb either.
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    t.input(b"\r");
    t.submitted();
    t.output(C);
    t.input(b":q");
    prompt(&mut t);
    type_keys(&mut t, b"ls", b"ls");
    assert_eq!(t.line().certainty, Certainty::Screen);
    // Hidden text typed ahead stays hidden text.
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    t.input(b"\r");
    t.submitted();
    t.output(C);
    t.input(b"x\x16\x1b");
    prompt(&mut t);
    t.output(b"x^[");
    assert!(t.line().is_unsure());
}

#[test]
fn the_sync_is_complete_only_once_the_line_is_redrawn() {
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    type_keys(&mut t, b"rm x", b"rm x");
    let n = t.syncs();
    // The S mark arrives in one read, the redraw in the next.
    t.output(b"\r\x1b[K\r\x1b]133;S\x07");
    assert!(!t.synced(n + 1));
    t.output(b"\x1b]133;A\x07alice@host:~$ \x1b]133;B\x07rm x");
    assert!(t.synced(n + 1));
    assert_eq!(t.line().line, "rm x");
}

#[test]
fn a_megabyte_without_enter_and_invalid_utf8_do_not_break_it() {
    let mut t = LineTracker::new(24, 80);
    prompt(&mut t);
    let big = vec![b'a'; 1 << 20];
    for chunk in big.chunks(4096) {
        let a = t.input(chunk);
        assert!(a.iter().all(|x| matches!(x, Action::Forward(_))));
        t.output(chunk);
    }
    t.input(b"\xff\xfe\xc3");
    t.output(b"\xff\xfe\xc3");
    let a = t.input(b"\r");
    assert_eq!(a, vec![Action::Enter(b"\r".to_vec())]);
    // The prompt scrolled away: not readable from the screen.
    let s = t.line();
    assert!(s.is_unsure(), "{:?}", s.certainty);
    assert!(s.line.len() >= 1 << 20);
}
