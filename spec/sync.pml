/*
 * spec/sync.pml: a Promela model of the Fieldlog sync protocol v1 (spec/protocol.md §8).
 *
 * One device log of N records (one record per batch: batch boundaries do not matter to
 * the rules checked here, a batch is the unit the receiver stores atomically), a sender
 * with a window of W batches and a resend of every unacknowledged batch, a network that
 * loses, duplicates and reorders batches and acks, TWO receivers sharing the batch stream
 * (an MQTT shared subscription), an idempotent store, receivers that crash between
 * committing and acking (a crash before the commit is the same as a lost message), device crashes (volatile
 * state lost, the durable acked pointer kept), and acks computed from a possibly stale
 * snapshot of the store (a Galera node that has not yet applied another node's commit),
 * and one record (chosen at the start, or none) whose content the database refuses every
 * time: the receiver isolates it and stores it as a rejected record, accounted for
 * (spec §5.2 "When the database says no"; IngestStateMachine).
 *
 * Faults are bounded by a budget MAXF; after it is spent the network is a reliable FIFO,
 * which is how "the channel eventually delivers" is stated here.
 *
 * Checked (scripts/checks/model):
 *   safety (assertions):
 *     S1 no acknowledged record is missing from the store      (device side, on every ack)
 *     S2 no record is stored twice                              (store, on every commit)
 *     S3 an ack never passes a record that is not stored        (receiver, on every publish)
 *   The store only grows and `acked` only changes on an ack, so checking S1 and S3 at those
 *   points checks them in every state.
 *   liveness (LTL, weak fairness): L1 <> (acked == N)
 *
 * Broken variants (compile with -D...; the check expects spin to find a violation):
 *   ACK_BEFORE_STORE  receiver acks through the batch when it takes it, before committing
 *   ACK_BATCH_MAX     receiver acks through max(prefix, batch) instead of the contiguous prefix
 *   NO_DEDUP          store inserts without de-duplication
 *   NO_RESEND         sender never resends (violates liveness when a batch is lost)
 *   ACK_ON_PUBLISH    sender counts a batch as acknowledged when it publishes it (the seed)
 *   RETRY_REFUSED     receiver retries a batch the database refuses for ever, as if the
 *                     connection were lost (issue D1: violates liveness)
 */

#define N 3          /* records; prefix() below is written out for N = 3 */
#define W 2          /* window: batches in flight */
#define MAXF 2       /* fault budget */
#define NETCAP 2     /* messages in transit per direction */

chan net  = [NETCAP] of { byte };   /* device -> receivers: batch seq */
chan acks = [NETCAP] of { byte };   /* receivers -> device: ack through */

byte rows[N + 1];     /* store: rows per sequence number (index 0 unused) */
byte acked = 0;       /* device: durable acked pointer */
byte next = 1;        /* device: lowest sequence number not yet sent (volatile) */
byte faults = 0;      /* faults spent */
byte poison = 0;      /* the record the database refuses (0: none) */

/* the contiguous stored prefix */
#define PREFIX (rows[1] == 0 -> 0 : (rows[2] == 0 -> 1 : (rows[3] == 0 -> 2 : 3)))

proctype Sender() {
end:
    do
    :: atomic { next <= N && next <= acked + W && len(net) < NETCAP -> net!next;
#ifdef ACK_ON_PUBLISH
                acked = next;   /* broken (the seed's bug): sent counts as delivered */
#endif
                next++ }
#ifndef NO_RESEND
       /* resend timer: every batch in the window not covered by the ack, oldest first */
    :: atomic { next > acked + 1 && len(net) < NETCAP -> net!(acked + 1);
                if :: next > acked + 2 && len(net) < NETCAP -> net!(acked + 2) :: else -> skip fi }
#endif
    :: atomic { faults < MAXF -> faults++; next = acked + 1 }   /* device crash and restart */
    od
}

proctype AckReader() {
    byte v;
end:
    do
    :: atomic {
           acks?v ->
           if
           :: v > acked -> acked = v;  /* persist; older acks are ignored */
                           if :: next <= acked -> next = acked + 1 :: else -> skip fi
           :: else -> skip
           fi;
           assert(acked <= PREFIX);    /* S1 */
           v = 0
       }
    od
}

proctype Receiver() {
    byte s, snap, through;
end:
    do
    :: atomic {
           net?s ->
#ifdef ACK_BEFORE_STORE
           /* broken: ack as soon as the batch arrives; no S3 check here, S1 must catch it */
           if :: len(acks) < NETCAP -> acks!s :: else -> skip fi;
#endif
           snap = PREFIX;             /* what a snapshot taken before this commit shows */
#ifdef RETRY_REFUSED
           /* broken: the refusal is taken for a lost connection and retried, for ever */
           if :: s == poison -> (false) :: else -> skip fi;
#endif
           /* (the correct receiver isolates a refused record and stores it as rejected: for
              what is checked here, accounted for exactly like a stored record) */
           /* commit: idempotent insert keyed by sequence number */
#ifdef NO_DEDUP
           rows[s]++;
#else
           if :: rows[s] == 0 -> rows[s] = 1 :: else -> skip fi;
#endif
           assert(rows[s] <= 1);      /* S2 */
           /* through: the prefix read after the commit, or an older snapshot (Galera lag) */
           if
           :: through = PREFIX
           :: through = snap
           fi;
#ifdef ACK_BATCH_MAX
           if :: s > through -> through = s :: else -> skip fi;
#endif
           s = 0; snap = 0
       };
       if
       :: atomic { faults < MAXF -> faults++; through = 0 }    /* crash after commit, before the ack */
       :: atomic { len(acks) < NETCAP -> assert(through <= PREFIX); acks!through; through = 0 }  /* S3 */
       fi
    od
}

proctype Network() {
    byte m;
end:
    do
    :: atomic { faults < MAXF && len(net) > 0 -> faults++; net?m; m = 0 }           /* lose a batch */
    :: atomic { faults < MAXF && len(net) == 1 -> faults++; net?m; net!m; net!m; m = 0 }  /* duplicate */
    :: atomic { faults < MAXF && len(net) > 1 -> faults++; net?m; net!m; m = 0 }    /* reorder */
    :: atomic { faults < MAXF && len(acks) > 0 -> faults++; acks?m; m = 0 }         /* lose an ack */
    :: atomic { faults < MAXF && len(acks) > 1 -> faults++; acks?m; acks!m; m = 0 } /* reorder acks */
    od
}

/* S1 as a global invariant, checked in every reachable state */
active proctype Monitor() {
end:
    atomic { !(acked <= PREFIX) -> assert(acked <= PREFIX) }
}

init {
    atomic {
        if :: poison = 0 :: poison = 1 :: poison = 2 :: poison = 3 fi;
        run Sender();
        run AckReader();
        run Receiver();
        run Receiver();
        run Network()
    }
}

ltl progress { <> (acked == N) }
