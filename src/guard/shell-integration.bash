# sallyport shell integration, installed by the session as `bash --rcfile`.
# Marks the prompt with OSC 133 (A: prompt start, B: input starts, C: command
# runs, D: command done) so the bastion reads the command line from the
# screen, and turns bracketed paste on so multi-line pastes are one edit.
[ -r /etc/bash.bashrc ] && . /etc/bash.bashrc
[ -r "$HOME/.bashrc" ] && . "$HOME/.bashrc"
bind 'set enable-bracketed-paste on' 2>/dev/null
__sallyport_ps1="${PS1:-\\u@\\h:\\w\\$ }"
__sallyport_prompt() { local s=$?; printf '\033]133;D;%s\007' "$s"; }
PROMPT_COMMAND="__sallyport_prompt${PROMPT_COMMAND:+;$PROMPT_COMMAND}"
PS1='\[\033]133;A\007\]'"$__sallyport_ps1"'\[\033]133;B\007\]'
PS0='\033]133;C\007'
# Sync: at Enter the bastion sends this key and reads the line once the S
# mark comes back, so a Tab completion or history recall still being drawn
# is on the screen first (readline handles keys in order).
__sallyport_sync() { printf '\033]133;S\007'; }
for __sallyport_m in emacs vi-insert vi-command; do
  bind -m "$__sallyport_m" -x '"\e[9999~": __sallyport_sync' 2>/dev/null
done
unset __sallyport_m
# Keys that would run a line the bastion cannot read first: the editor of
# edit-and-execute-command.
bind -r '\C-x\C-e' 2>/dev/null
bind -m vi-command -r 'v' 2>/dev/null
