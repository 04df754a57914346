#!/bin/sh
# An MDA for fetchmail: write the message on standard input to a new file in the folder $1.
set -e
dir=$1
name="msg.$(date +%s%N).$$"
cat > "$dir/.tmp.$name"
mv "$dir/.tmp.$name" "$dir/$name"
