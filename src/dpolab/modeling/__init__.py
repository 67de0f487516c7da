"""Models as dpolab sees them: their parts (`anatomy`), loading (`loading`, `fingerprint`), the rows
a batch packs (`collate`, `attention`) and completion log-probs from any layer (`logprobs`, `head`)."""
