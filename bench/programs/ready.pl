#!/usr/bin/perl
# A bench instance for `ready: notify`: one READY=1 to NOTIFY_SOCKET, then it becomes
# `/bin/sleep 100000` (exec: the same pid, so the daemon knows the sender; nothing stays resident).
use strict;
use warnings;
use Socket;
my $address = $ENV{NOTIFY_SOCKET} or die "no NOTIFY_SOCKET\n";
$address =~ s/^@/\0/;
socket(my $sock, PF_UNIX, SOCK_DGRAM, 0) or die "socket: $!\n";
send($sock, "READY=1", 0, pack_sockaddr_un($address)) or die "send: $!\n";
exec("/bin/sleep", "100000") or die "exec: $!\n";
