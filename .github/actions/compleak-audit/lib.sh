# Shared by the action's steps (sourced): outputs written in GitHub's delimiter form, values escaped in workflow
# commands, and the input checks. No input value is ever pasted into a script: it arrives in the environment.

# gh_put NAME VALUE: append NAME=VALUE to $GITHUB_OUTPUT in the multi-line form with a random delimiter, so a value
# holding a newline cannot add an output of its own.
gh_put() {
  local delim
  delim="ghadelimiter_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  printf '%s<<%s\n%s\n%s\n' "$1" "$delim" "$2" "$delim" >> "$GITHUB_OUTPUT"
}

# gh_escape VALUE: VALUE as a workflow command's data (% CR LF escaped), so it cannot start a command of its own.
gh_escape() {
  local v="${1//'%'/%25}"
  v="${v//$'\r'/%0D}"
  printf '%s' "${v//$'\n'/%0A}"
}

# gh_fail NAME WHY: one error annotation naming the input, exit status 2.
gh_fail() {
  echo "::error::compleak input $1: $(gh_escape "$2")"
  exit 2
}

# check_line NAME VALUE: a one-line value without control characters.
check_line() {
  case "$2" in
    *[[:cntrl:]]*) gh_fail "$1" "must be one line without control characters" ;;
  esac
}
