import json,sys
for f in sys.argv[1:]:
    try: r=json.load(open(f))
    except Exception as e: print(f, "missing", e); continue
    keys=["step_ms","samples_per_s","backbone_neck_only_step_ms","ratio_to_backbone_only","peak_memory_gb","memory_reserved_gb","host_syncs_per_step"]
    print(f, {k:r.get(k) for k in keys})
    p=r.get("profile") or {}
    for k in ("wall_ms_per_step","gpu_kernel_ms_per_step","gpu_busy_share","kernel_launches_per_step","gpu_ms_per_step_by_kind","largest_gpu_idle_gaps"):
        if k in p: print("  ",k,p[k])
