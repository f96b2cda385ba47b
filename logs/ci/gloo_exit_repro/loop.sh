mode=$1; n=$2; fails=0
for i in $(seq $n); do
  f=/tmp/gl/init_$$_$i; rm -f $f
  python3 rep.py 0 $f $mode 2>/tmp/gl/e0_$$ & p0=$!
  python3 rep.py 1 $f $mode 2>/tmp/gl/e1_$$ & p1=$!
  wait $p0; r0=$?; wait $p1; r1=$?
  if [ $r0 != 0 ] || [ $r1 != 0 ]; then fails=$((fails+1)); echo "fail $i r0=$r0 r1=$r1 $(cat /tmp/gl/e0_$$ /tmp/gl/e1_$$ | grep -v Warning | grep -v return | head -2 | tr '\n' ' ')"; fi
  rm -f $f
done
echo "mode=$mode fails=$fails/$n"
