# kthw: every line this step prints is cut into pieces of at most LOG_LINE_BYTES bytes.
# pulumi-command 1.2.1 reads a logged step's output with a 64 KiB line limit: past it the reader
# stops, nothing drains the output, and the step hangs forever. A piece never ends inside a UTF-8
# character (it gives back up to 3 bytes). The folds read this shell's own stdout and stderr, so
# the script's exit status and its `set -euo pipefail` are its own. perl is perl-base, an
# essential package of every Debian and Ubuntu image.
kthw_fold_lines() {
  perl -ne 'BEGIN { $| = 1 }
    sub cut { my $at = {{ line_bytes }}; $at-- while $at > {{ line_bytes }} - 4 && substr($_[0], $at, 1) =~ /[\x80-\xbf]/; $at }
    my $end = s/\n\z// ? "\n" : "";
    print substr($_, 0, cut($_), ""), "\n" while length > {{ line_bytes }};
    print $_, $end;'
}
exec > >(kthw_fold_lines) 2> >(kthw_fold_lines >&2)
