export JAVA_HOME=$RK/jre0 SPARK_HOME=$RK/spark
export PATH=$JAVA_HOME/bin:$PATH PYTHONPATH=$RK/site:$PWD:$PWD/plugins
export SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$(command -v $PY) PYSPARK_DRIVER_PYTHON=$(command -v $PY)
