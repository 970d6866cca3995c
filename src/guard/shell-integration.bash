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
