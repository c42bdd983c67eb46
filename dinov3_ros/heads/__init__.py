"""dinov3_ros.heads: dense heads on frozen patch features (no ROS, no backbone dependency).

Modules: :mod:`.pca` (PCA view), :mod:`.depth` (linear/DPT depth heads, head files), :mod:`.losses`
(depth losses), :mod:`.pointcloud` (back-projection, open3d clean-up), :mod:`.correspondence`
(matching, verification, rigid motion), :mod:`.tokencut` (TokenCut, multi-object, tracker),
:mod:`.objects_head` (TokenCut's learned token projection, head files), :mod:`.mask_refine`
(edge-aligned object masks),
:mod:`.upsample` (bilinear / joint-bilateral / guided feature upsampling). Import the submodule you
need; importing this package is cheap.
"""
