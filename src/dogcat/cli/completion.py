"""``dogcat completion bash|zsh``: a static completion script (commands, each command's options, the choices
of options that have them, the built-in recipes and files after ``-c`` / ``--config``). It is plain shell, generated once from the command table and the config, so
pressing TAB runs no Python and imports no torch.

    eval "$(dogcat completion bash)"      # in ~/.bashrc
    eval "$(dogcat completion zsh)"       # in ~/.zshrc (after compinit)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import OPTIONS, ConfigError, builtin, flag
from .args import names

if TYPE_CHECKING:
    from .args import Command


def _choices() -> dict[str, tuple[str, ...]]:
    out = {flag(leaf): f.metadata["choices"] for leaf, (_, f) in OPTIONS.items() if f.metadata.get("choices")}
    out["--format"] = ("onnx", "torchscript", "safetensors")
    return out


def bash(commands: dict[str, Command]) -> str:
    cases = "\n".join(f"    {n}) opts=\"{' '.join(names(cmd))}\" ;;" for n, cmd in commands.items())
    values = "\n".join(f"    {k}) vals=\"{' '.join(v)}\" ;;" for k, v in _choices().items())
    recipes = " ".join(builtin.names())
    return f"""# dogcat bash completion: eval "$(dogcat completion bash)"
_dogcat() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" opts="" vals="" opt=""
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=( $(compgen -W "{' '.join(commands)} --help --version" -- "$cur") ); return
  fi
  case "${{COMP_WORDS[1]}}" in
{cases}
  esac
  if [ "$prev" = "=" ] && [ "$COMP_CWORD" -ge 2 ]; then opt="${{COMP_WORDS[COMP_CWORD-2]}}"
  elif [ "$cur" = "=" ]; then opt="$prev"; cur=""
  elif [[ "$prev" == -* ]]; then opt="$prev"; fi
  case "$opt" in
{values}
    --config|-c) COMPREPLY=( $(compgen -W "{recipes}" -- "$cur") $(compgen -f -- "$cur") ); return ;;
  esac
  if [ -n "$vals" ]; then COMPREPLY=( $(compgen -W "$vals" -- "$cur") ); return; fi
  if [[ "$cur" == -* ]]; then COMPREPLY=( $(compgen -W "$opts" -- "$cur") ); return; fi
  COMPREPLY=( $(compgen -f -- "$cur") )
}}
complete -o default -o bashdefault -F _dogcat dogcat dogcat-vision
"""


def zsh(commands: dict[str, Command]) -> str:
    cmds = " ".join(f"'{n}:{cmd.summary.replace(chr(39), '').replace(':', ' -')}'" for n, cmd in commands.items())
    cases = "\n".join(f"    {n}) opts=({' '.join(names(cmd))}) ;;" for n, cmd in commands.items())
    values = "\n".join(f"    {k}) vals=({' '.join(v)}) ;;" for k, v in _choices().items())
    recipes = " ".join(builtin.names())
    return f"""#compdef dogcat dogcat-vision
# dogcat zsh completion: eval "$(dogcat completion zsh)" (after compinit)
_dogcat() {{
  local -a cmds opts vals
  cmds=({cmds})
  if (( CURRENT == 2 )); then _describe 'command' cmds; return; fi
  case $words[2] in
{cases}
  esac
  if [[ $PREFIX == --*=* ]]; then
    case ${{PREFIX%%=*}} in
{values}
      --config) compset -P '*='; compadd {recipes}; _files; return ;;
    esac
    if (( $#vals )); then compset -P '*='; compadd -a vals; return; fi
    compset -P '*='; _files; return
  fi
  if [[ $words[CURRENT-1] == (-c|--config) ]]; then compadd {recipes}; _files; return; fi
  if [[ $PREFIX == -* ]]; then compadd -a opts; else _files; fi
}}
compdef _dogcat dogcat dogcat-vision
"""


def script(shell: str, commands: dict[str, Command]) -> str:
    if shell not in ("bash", "zsh"):
        raise ConfigError(f"completion for {shell!r}: choose bash or zsh")
    return bash(commands) if shell == "bash" else zsh(commands)
