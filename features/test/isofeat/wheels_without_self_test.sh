#!/bin/bash
# isofeat from the wheel built from this repository, self-test off (root).
source dev-container-features-test-lib

check "isofeat --version runs" bash -c 'isofeat --version | grep -Eq "^isofeat [0-9]"'
check "isofeat comes from its own venv" test "$(readlink /usr/local/bin/isofeat)" = /opt/isofeat/venv/bin/isofeat
check "run-claude is on the PATH" test "$(readlink "$(command -v run-claude)")" = /opt/isofeat/venv/bin/run-claude
check "the hooks' command exists" bash -c 'isofeat notify send --help >/dev/null'
check "ISOFEAT_SANDBOX=1" test "$ISOFEAT_SANDBOX" = 1
check "postStart script is silent and does not run the self-test" bash -c 'out=$(/usr/local/share/isofeat/post-start 2>&1) && [ -z "$out" ] && ! grep -q "^exec .*isofeat doctor" /usr/local/share/isofeat/post-start'
check "system python is untouched (no isofeat there)" bash -c '! python3 -c "import isofeat" 2>/dev/null'

reportResults
