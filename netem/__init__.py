"""Network degradation runs: named link profiles, a three-namespace lab (agent, router,
caller), link impairment with `tc netem` or a fallback (nftables loss, `tbf` rate, an
NFQUEUE delay/jitter/reorder handler), and a sweep that calls the real agent through the
impaired lab and reports how the conversation held up."""
