"""npllm 课程（lessons 01–10）：Markdown 讲义 + 可运行示例。

    python -m lessons            # 运行全部示例
    python -m lessons 5          # 只运行第 5 课
    python -m lessons --quick    # 快速模式（测试用，几十秒）

每课一个示例模块 ``lessons/exNN_*.py``，都提供 ``main(quick: bool)``。
讲义里关于 npllm 的每个数字都由这些示例打印出来，不手抄。
"""

LESSONS = {
    1: "ex01_tokens_and_embeddings",
    2: "ex02_attention",
    3: "ex03_rope_and_norms",
    4: "ex04_transformer_block",
    5: "ex05_causal_lm_and_generation",
    6: "ex06_real_checkpoints",
    7: "ex07_speed",
    8: "ex08_model_families",
    9: "ex09_serving",
    10: "ex10_decoding",
}
