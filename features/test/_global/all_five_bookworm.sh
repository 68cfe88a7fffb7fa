#!/bin/bash
# All five features on Debian bookworm, in the recommended install order.
source dev-container-features-test-lib
source ./checks.sh
check "node from the PyPI wheel (bookworm's nodejs is 18)" test "$(readlink -f "$(command -v node)")" = /usr/local/lib/isofeat-node/bin/node
reportResults
